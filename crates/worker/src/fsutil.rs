//! Read-only memory maps of spool files, so large payloads are checked
//! without copying them into memory.
#![allow(unsafe_code)]

use std::path::Path;

/// Map `path` read-only.
pub fn map(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: spool files are private to the worker and never modified
    // after they are written (inputs are renamed into place, outputs are
    // written to a temporary name and renamed), so the map cannot change
    // underneath the decoder.
    unsafe { memmap2::Mmap::map(&file) }
}

/// An exclusive lock on a spool directory's `lock` file, held as long as
/// this value lives (the OS drops it when the process dies): `flock` on
/// Unix, `LockFileEx` on Windows.
#[derive(Debug)]
pub struct SpoolLock {
    _file: std::fs::File,
}

/// Take the spool's lock without waiting. `Ok(Err(pid))` when another
/// process holds it (`pid` as that process wrote it, when readable).
pub fn lock_spool(dir: &Path) -> std::io::Result<Result<SpoolLock, Option<u32>>> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    if !try_lock_exclusive(&file)? {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Ok(Err(text.trim().parse().ok()));
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(Ok(SpoolLock { _file: file }))
}

#[cfg(unix)]
fn try_lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor this function borrows; no memory involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(windows)]
fn try_lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::windows::io::AsRawHandle as _;
    use windows_sys::Win32::Foundation::ERROR_LOCK_VIOLATION;
    use windows_sys::Win32::Storage::FileSystem::{
        LockFileEx, LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY,
    };
    // SAFETY: a zeroed OVERLAPPED (offset 0) is valid for a synchronous call.
    let mut overlapped = unsafe { std::mem::zeroed() };
    // SAFETY: a handle this function borrows and an OVERLAPPED alive for
    // the call; the whole file's range is locked.
    let ok = unsafe {
        LockFileEx(
            file.as_raw_handle(),
            LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
            0,
            u32::MAX,
            u32::MAX,
            &mut overlapped,
        )
    };
    if ok != 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == i32::try_from(ERROR_LOCK_VIOLATION).ok() {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_spool_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = lock_spool(dir.path()).expect("io").expect("first lock");
        let second = lock_spool(dir.path()).expect("io");
        assert_eq!(second.err(), Some(Some(std::process::id())));
        drop(first);
        assert!(lock_spool(dir.path()).expect("io").is_ok());
    }
}
