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
