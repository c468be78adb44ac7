//! Entry point of the `comfy-remote` binary.

fn main() {
    std::process::exit(comfy_remote_cli::run(std::env::args_os()));
}
