//! Atomic file and folder output: a reader never sees a partially written result.
//!
//! Everything the toolkit writes goes through [`write_atomic`] (one file) or
//! [`write_dir_atomic`] (a folder such as a DICOM series): the content is written under a
//! temporary name in the destination's own folder (so the final rename stays on one file
//! system and is atomic), flushed to disk with `fsync`, and only then renamed into place. If
//! the writer fails or panics, the temporary is removed and the destination is untouched.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An atomic write that failed, naming the destination.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl WriteError {
    pub fn new(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

type Result<T, E = WriteError> = std::result::Result<T, E>;

/// Distinguishes temporaries created by concurrent writers within one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A hidden temporary name beside `path`: `.NAME.PID.N.tmp`.
fn temp_sibling(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        WriteError::new(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(".{}.{}.{n}.tmp", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(tmp_name))
}

/// The folder holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes the temporary on drop unless [`TempGuard::keep`] was called.
struct TempGuard {
    path: PathBuf,
    is_dir: bool,
    armed: bool,
}

impl TempGuard {
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let removed = if self.is_dir {
                fs::remove_dir_all(&self.path)
            } else {
                fs::remove_file(&self.path)
            };
            if let Err(e) = removed {
                tracing::warn!("could not remove temporary {}: {e}", self.path.display());
            }
        }
    }
}

/// The environment variable of the injected write failure (for tests of what a full disk
/// does; never set in real use).
pub const FAIL_WRITES_ENV: &str = "NCCT2CTPA_TEST_FAIL_WRITES";

/// A test hook: when [`FAIL_WRITES_ENV`] holds a non-empty string that `path` contains, the
/// write fails as on a full disk (ENOSPC), after its temporary was written and before it is
/// renamed into place.
fn injected_failure(path: &Path) -> Option<std::io::Error> {
    let pattern = std::env::var(FAIL_WRITES_ENV).ok()?;
    let hit = !pattern.is_empty() && path.to_string_lossy().contains(&pattern);
    hit.then(|| {
        tracing::warn!(
            "{}: injected write failure ({FAIL_WRITES_ENV})",
            path.display()
        );
        std::io::Error::from_raw_os_error(28) // ENOSPC
    })
}

/// Best-effort `fsync` of a folder, so that a rename inside it survives a crash.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes a file atomically: `write` fills a buffered writer on a temporary file in the same
/// folder; the file is then flushed, `fsync`ed and renamed over `path`.
///
/// On any error (from `write` or the OS) the temporary is removed, `path` is left as it was,
/// and the error names `path`. The destination's folder must exist.
///
/// ```no_run
/// # use std::io::Write;
/// util::atomic::write_atomic(std::path::Path::new("out.json"), |w| {
///     w.write_all(b"{}")
/// })?;
/// # Ok::<(), util::atomic::WriteError>(())
/// ```
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let tmp = temp_sibling(path)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| WriteError::new(path, e))?;
    let guard = TempGuard {
        path: tmp.clone(),
        is_dir: false,
        armed: true,
    };
    let mut out = BufWriter::new(file);
    write(&mut out).map_err(|e| WriteError::new(path, e))?;
    let file = out
        .into_inner()
        .map_err(|e| WriteError::new(path, e.into_error()))?;
    file.sync_all().map_err(|e| WriteError::new(path, e))?;
    drop(file);
    if let Some(e) = injected_failure(path) {
        return Err(WriteError::new(path, e));
    }
    fs::rename(&tmp, path).map_err(|e| WriteError::new(path, e))?;
    guard.keep();
    sync_dir(parent_dir(path));
    tracing::debug!("wrote {} atomically", path.display());
    Ok(())
}

/// Creates a folder atomically: `fill` writes the folder's content into a temporary folder
/// beside `dir` (it receives that folder's path), which is then renamed to `dir`.
///
/// `dir` must not exist yet, or be an empty folder; a non-empty `dir` is an error (we never
/// replace someone's data). On any error the temporary folder and everything in it is removed.
/// `fill` returns the caller's own error type `E`; this function's own I/O failures become
/// `E` through `From<WriteError>`.
pub fn write_dir_atomic<F, E>(dir: &Path, fill: F) -> Result<(), E>
where
    F: FnOnce(&Path) -> Result<(), E>,
    E: From<WriteError>,
{
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(|e| WriteError::new(dir, e))?;
        if entries.next().is_some() {
            return Err(WriteError::new(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "output folder exists and is not empty",
                ),
            )
            .into());
        }
    }
    let tmp = temp_sibling(dir)?;
    fs::create_dir(&tmp).map_err(|e| WriteError::new(dir, e))?;
    let guard = TempGuard {
        path: tmp.clone(),
        is_dir: true,
        armed: true,
    };
    fill(&tmp)?;
    sync_dir(&tmp);
    if let Some(e) = injected_failure(dir) {
        return Err(WriteError::new(dir, e).into());
    }
    if dir.exists() {
        // Empty (checked above); rename(2) replaces an empty folder, but be explicit.
        fs::remove_dir(dir).map_err(|e| WriteError::new(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| WriteError::new(dir, e))?;
    guard.keep();
    sync_dir(parent_dir(dir));
    tracing::debug!("wrote folder {} atomically", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        write_atomic(&p, |w| w.write_all(b"one")).unwrap();
        write_atomic(&p, |w| w.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(names(d.path()), vec!["a.txt"]);
    }

    #[test]
    fn failure_leaves_old_content_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        fs::write(&p, b"old").unwrap();
        let err = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("a.txt"), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(names(d.path()), vec!["a.txt"]);
    }

    #[test]
    fn panic_in_writer_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.bin");
        let r = std::panic::catch_unwind(|| {
            let _ = write_atomic(&p, |w| {
                w.write_all(b"x")?;
                panic!("writer panicked")
            });
        });
        assert!(r.is_err());
        assert!(names(d.path()).is_empty());
    }

    #[test]
    fn missing_folder_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nope").join("c.txt");
        let err = write_atomic(&p, |w| w.write_all(b"x")).unwrap_err();
        assert!(err.to_string().contains("c.txt"), "{err}");
    }

    #[test]
    fn dir_is_created_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("series");
        let err = write_dir_atomic(&out, |tmp| {
            fs::write(tmp.join("1.dcm"), b"x").map_err(|e| WriteError::new(tmp, e))?;
            Err(WriteError::new(
                tmp,
                std::io::Error::other("second slice failed"),
            ))
        })
        .unwrap_err();
        assert!(err.to_string().contains("second slice"));
        assert!(names(d.path()).is_empty());

        write_dir_atomic(&out, |tmp| {
            fs::write(tmp.join("1.dcm"), b"x").map_err(|e| WriteError::new(tmp, e))
        })
        .unwrap();
        assert_eq!(names(&out), vec!["1.dcm"]);
        // A non-empty destination is never replaced.
        assert!(write_dir_atomic::<_, WriteError>(&out, |_| Ok(())).is_err());
        assert_eq!(names(&out), vec!["1.dcm"]);
    }
}
