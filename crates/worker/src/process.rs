//! The ComfyUI child process, spawned as a group the worker stops whole (no
//! orphans): a Unix process group (tied to our life on Linux), or a Windows
//! job object (the OS kills it when the worker's handle closes).
//!
//! This is the only module with `unsafe`: `pre_exec` and two libc calls on
//! Unix, the job object calls on Windows.
#![allow(unsafe_code)]

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// A child and everything it starts, stopped together.
#[derive(Debug)]
pub struct Group {
    child: Child,
    /// The leader's pid, kept: `Child::id` forgets it once the child is
    /// reaped, and its group may still have members then.
    pid: Option<u32>,
    #[cfg(windows)]
    job: Option<windows::Job>,
}

impl Group {
    /// The child's process id while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Wait for the child (the group leader) to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }
}

/// Spawn `cmd` as the leader of a new group. On Linux the child also gets
/// SIGKILL if the worker dies without cleaning up; on Windows the job
/// object kills the whole tree when the worker's last handle to it closes.
pub fn spawn_group(mut cmd: Command) -> std::io::Result<Group> {
    cmd.kill_on_drop(true).stdin(Stdio::null());
    #[cfg(unix)]
    cmd.process_group(0);
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
    #[cfg(windows)]
    {
        // Its own console process group: a Ctrl+C meant for the worker is
        // not delivered to ComfyUI, which the worker stops itself.
        cmd.creation_flags(windows::CREATE_NEW_PROCESS_GROUP);
        let child = cmd.spawn()?;
        // A job failure leaves a child that is still stopped on exit (kill
        // on drop), only without its grandchildren: log it, keep going.
        let job = windows::Job::new().and_then(|job| {
            job.assign(&child)?;
            Ok(job)
        });
        let job = match job {
            Ok(job) => Some(job),
            Err(err) => {
                tracing::warn!(%err, "could not put ComfyUI in a job object; its child processes may outlive it");
                None
            }
        };
        Ok(Group {
            pid: child.id(),
            child,
            job,
        })
    }
    #[cfg(not(windows))]
    {
        let child = cmd.spawn()?;
        Ok(Group {
            pid: child.id(),
            child,
        })
    }
}

/// Stop the child's whole group: a polite signal (SIGTERM; Ctrl+Break on
/// Windows), then a kill of everything in it after `grace`. Also reaps
/// what is left of the group after the leader has exited.
pub async fn stop_group(group: &mut Group, grace: Duration) {
    if group.child.id().is_some() {
        group.ask_to_stop();
        if tokio::time::timeout(grace, group.child.wait())
            .await
            .is_err()
        {
            group.kill_all();
            let _ = group.child.start_kill();
        }
    }
    let _ = group.child.wait().await;
    // Grandchildren that ignored the signal must not outlive the leader.
    group.kill_all();
}

#[cfg(unix)]
impl Group {
    fn ask_to_stop(&self) {
        signal_group(self.pid, libc::SIGTERM);
    }

    fn kill_all(&self) {
        signal_group(self.pid, libc::SIGKILL);
    }
}

#[cfg(unix)]
fn signal_group(pid: Option<u32>, signal: i32) {
    let Some(Ok(pid)) = pid.map(libc::pid_t::try_from) else {
        return;
    };
    // SAFETY: plain syscall on a process group we created; errors (group
    // already gone) are harmless and ignored.
    unsafe {
        libc::killpg(pid, signal);
    }
}

#[cfg(windows)]
impl Group {
    fn ask_to_stop(&self) {
        if let Some(pid) = self.pid {
            windows::ctrl_break(pid);
        }
    }

    fn kill_all(&self) {
        if let Some(job) = &self.job {
            job.terminate();
        }
    }
}

#[cfg(windows)]
mod windows {
    //! The job object that holds ComfyUI and its children.

    use std::os::windows::io::{AsRawHandle as _, FromRawHandle as _, OwnedHandle};

    use windows_sys::Win32::System::Console::{GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        SetInformationJobObject, TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };

    pub use windows_sys::Win32::System::Threading::CREATE_NEW_PROCESS_GROUP;

    /// A job object that kills its processes when its last handle closes.
    #[derive(Debug)]
    pub struct Job(OwnedHandle);

    impl Job {
        pub fn new() -> std::io::Result<Job> {
            // SAFETY: no name, default security; a null result is an error.
            let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
            if raw.is_null() {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh handle this value now owns.
            let job = Job(unsafe { OwnedHandle::from_raw_handle(raw) });
            // SAFETY: a zeroed struct is a valid "no limits" value.
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            // SAFETY: the pointer and size describe `info`, alive for the call.
            let ok = unsafe {
                SetInformationJobObject(
                    job.0.as_raw_handle(),
                    JobObjectExtendedLimitInformation,
                    std::ptr::from_ref(&info).cast(),
                    u32::try_from(std::mem::size_of_val(&info)).unwrap_or(u32::MAX),
                )
            };
            if ok == 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(job)
        }

        /// Put `child` in the job; processes it starts from then on join it.
        /// (It runs for a moment before this: ComfyUI starts no process
        /// that early.)
        pub fn assign(&self, child: &tokio::process::Child) -> std::io::Result<()> {
            let Some(process) = child.raw_handle() else {
                return Err(std::io::Error::other("the child has already exited"));
            };
            // SAFETY: both handles are valid for the call.
            if unsafe { AssignProcessToJobObject(self.0.as_raw_handle(), process) } == 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }

        /// Kill every process in the job.
        pub fn terminate(&self) {
            // SAFETY: a valid job handle; failure (already empty) is harmless.
            unsafe {
                TerminateJobObject(self.0.as_raw_handle(), 1);
            }
        }
    }

    /// Ctrl+Break to the child's console process group (ComfyUI's Python
    /// exits on it). Without a shared console it fails, harmlessly: the
    /// job is terminated after the grace period.
    pub fn ctrl_break(pid: u32) {
        // SAFETY: plain call; errors are ignored.
        unsafe {
            GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid);
        }
    }
}
