//! `comfy-remote-server`: the whole `comfy-remote` command line, `serve`
//! included, as its own executable. It ships in the `comfy-remote-server`
//! wheel next to the artist's `comfy-remote` package (whose native module
//! has no server), so `comfy-remote serve` can hand over to it.

fn main() {
    std::process::exit(comfy_remote_cli::run(std::env::args_os()));
}
