//! Logging to stderr (`RUST_LOG` filters; default `info`; `NO_COLOR` turns colours off), set up once.

/// Install the stderr subscriber; later calls do nothing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(comfy_remote_protocol::env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os(comfy_remote_protocol::env::NO_COLOR).is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .try_init();
}
