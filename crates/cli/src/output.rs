//! Results on stdout without panics: `println!` panics when stdout is a
//! closed pipe (`comfy-remote run ... --json | head -0`); these helpers
//! write with `writeln!` and treat a closed pipe as a quiet end of output.

use std::io::Write as _;

/// Write one line to stdout. A reader that went away (broken pipe) is not
/// an error: the rest of the output is simply dropped. Other write errors
/// are returned.
pub fn line(text: impl std::fmt::Display) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    quiet(writeln!(out, "{text}").and_then(|()| out.flush()))
}

/// `Ok(())` for a broken pipe, the error otherwise.
pub fn quiet(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_quiet_other_errors_are_not() {
        let broken = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(quiet(Err(broken)).is_ok());
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(quiet(Err(other)).is_err());
    }
}
