//! The ComfyUI child process: spawn in its own process group, tied to our
//! life on Linux, and stopped with its whole group (no orphans).
//!
//! This is the only module with `unsafe`: `pre_exec` and two libc calls.
#![allow(unsafe_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Spawn `cmd` as the leader of a new process group. On Linux the child
/// also gets SIGKILL if the worker dies without cleaning up.
pub fn spawn_group(mut cmd: Command) -> std::io::Result<Child> {
    cmd.process_group(0).kill_on_drop(true).stdin(Stdio::null());
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn signal_group(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: plain syscall on a process group we created; errors (group
    // already gone) are harmless and ignored.
    unsafe {
        libc::killpg(pid, signal);
    }
}

/// Stop the child's whole process group: SIGTERM, then SIGKILL after `grace`.
pub async fn stop_group(child: &mut Child, grace: Duration) {
    let Some(pid) = child.id() else {
        let _ = child.wait().await;
        return;
    };
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    // Grandchildren that ignored SIGTERM must not outlive the leader.
    signal_group(pid, libc::SIGKILL);
}
