//! The lock a `prepare` run holds on its output folder for the whole run
//! ([`util::lock`]: an OS `flock`, released however the process ends; the holder is named in
//! the error).

use super::PrepareError;
use std::path::Path;
use util::lock::{lock_folder, FolderLock, LockError};

/// Name of the lock file inside the prepared folder.
pub const LOCK_FILE: &str = ".prepare.lock";

/// Takes the exclusive lock on the prepared folder `out` (which must exist), or fails at once
/// with [`PrepareError::Locked`] naming the folder and the run that holds it.
pub fn lock_output(out: &Path) -> Result<FolderLock, PrepareError> {
    lock_folder(out, LOCK_FILE).map_err(|e| match e {
        LockError::Io { path, source } => PrepareError::Io { path, source },
        LockError::Locked { dir, holder } => PrepareError::Locked { dir, holder },
    })
}
