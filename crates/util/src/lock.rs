//! An advisory lock on an output folder, held for as long as a process writes into it: a
//! prepared dataset during `prepare`, a run folder during `train`.
//!
//! Two processes writing into one folder (two shells, or a `--resume` started while the run
//! still trains) would delete each other's temporaries, interleave rewrites of the same files
//! and race on renames. So a process takes an exclusive lock first, and a second one fails at
//! once with an error naming the folder and the holder, instead of waiting or corrupting
//! anything.
//!
//! How, and why this way (as cargo locks its build and package folders): an OS `flock` on a
//! lock file in the folder ([`std::fs::File::try_lock`]), held by an open file for the run.
//! The kernel releases it when the file is closed, however the process ends (crash, kill -9,
//! power loss needs no cleanup either), so a lock left by a dead run never blocks: there is no
//! pid guessing or staleness timeout, the usual weakness of lock files created with `O_EXCL`.
//! flock locks belong to the open file, so two runs inside one process exclude each other too
//! (POSIX `fcntl` locks would not). The file itself carries who holds it (pid, host, start
//! time) for the error message only; it is never deleted, because removing a lock file lets a
//! third run lock a fresh file while a second still waits on the old one. File systems without
//! lock support (some network file systems) get a warning at start and no lock, as in cargo.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{debug, warn};

/// Why a folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the lock; `holder` says who (pid, host, start, command).
    #[error("{}: another process holds this folder ({holder})", dir.display())]
    Locked { dir: PathBuf, holder: String },
}

/// Proof that this process may write into a folder; the lock is released on drop.
#[derive(Debug)]
pub struct FolderLock {
    /// None where the file system does not support locks (the run goes on unprotected).
    file: Option<File>,
    path: PathBuf,
}

impl FolderLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Closing the file releases the lock too; unlocking first says so explicitly.
            if let Err(e) = file.unlock() {
                debug!("{}: unlock: {e}", self.path.display());
            }
            debug!("{}: released", self.path.display());
        }
    }
}

/// Takes the exclusive lock on folder `out` (which must exist) through its file `file_name`,
/// or fails at once with [`LockError::Locked`] naming the folder and the process that holds
/// it.
pub fn lock_folder(out: &Path, file_name: &str) -> Result<FolderLock, LockError> {
    let path = out.join(file_name);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    // No truncation before the lock is ours: the holder's details are in there.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the holder may be writing it right now.
            let _ = file.read_to_string(&mut holder);
            return Err(LockError::Locked {
                dir: out.to_path_buf(),
                holder: describe_holder(&holder),
            });
        }
        Err(TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => {
            warn!(
                "{}: this file system cannot lock files ({e}); going on without protection \
                 against a second process writing into the same folder",
                out.display()
            );
            return Ok(FolderLock { file: None, path });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(holder_record().as_bytes()).map_err(io)?;
    file.sync_data().map_err(io)?;
    debug!("{}: locked", path.display());
    Ok(FolderLock {
        file: Some(file),
        path,
    })
}

/// What the lock file says about the run holding it: `key=value` lines.
fn holder_record() -> String {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "pid={}\nhost={}\nstarted_unix={started}\ncommand={}\n",
        std::process::id(),
        host_name(),
        std::env::args().collect::<Vec<_>>().join(" ")
    )
}

/// The machine's name, for telling users where the other run is (Linux; "unknown" elsewhere).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// A lock file's record as a phrase: "pid 123 on host h, started 42 s ago, running `...`".
fn describe_holder(record: &str) -> String {
    let field = |key: &str| {
        record.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .map(str::trim)
        })
    };
    let Some(pid) = field("pid") else {
        return "holder unknown: its lock file is empty, it may be starting".into();
    };
    let mut s = format!("pid {pid} on host {}", field("host").unwrap_or("unknown"));
    if let Some(started) = field("started_unix").and_then(|t| t.parse::<u64>().ok()) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        s.push_str(&format!(", started {} s ago", now.saturating_sub(started)));
    }
    if let Some(cmd) = field("command").filter(|c| !c.is_empty()) {
        s.push_str(&format!(", running `{cmd}`"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_record_reads_back_as_a_phrase() {
        let phrase = describe_holder(&holder_record());
        assert!(
            phrase.starts_with(&format!("pid {} on host ", std::process::id())),
            "{phrase}"
        );
        assert!(phrase.contains("started 0 s ago") || phrase.contains("started 1 s ago"));
        assert!(describe_holder("").contains("holder unknown"));
        assert_eq!(describe_holder("pid=7\n"), "pid 7 on host unknown");
    }

    #[test]
    fn second_lock_in_the_same_process_is_refused_until_the_first_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        let first = lock_folder(t.path(), ".test.lock").unwrap();
        let err = lock_folder(t.path(), ".test.lock").unwrap_err();
        assert!(matches!(err, LockError::Locked { .. }), "{err}");
        drop(first);
        let again = lock_folder(t.path(), ".test.lock").unwrap();
        assert_eq!(again.path(), t.path().join(".test.lock"));
        // The record is this run's, rewritten whole (not appended to the previous one).
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(text.matches("pid=").count(), 1, "{text}");
    }
}
