//! The run directory: one folder per training run, self-contained, never shared.
//!
//! ```text
//! RUN/
//!   config.toml            the resolved configuration, written before step 1
//!   train.log              human log (start, validation summaries, checkpoints, errors)
//!   metrics.jsonl          one JSON object per event: {"step", "event", ...named fields}
//!   curves.png             loss and validation curves, refreshed at each validation
//!   samples/step_NNNNNN.png
//!   checkpoints/{latest,best,final}/
//!   debug/step_N/          snapshot written when a loss turns non-finite
//! ```
//!
//! Policy: a run never writes into another run's folder. Starting a new run (no `--resume`)
//! in a folder that exists and is not empty is an error that says so; only callers that chose
//! the name themselves (the demo) use [`next_free`] to pick `NAME-2`, `NAME-3`, ... instead.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Which prepared dataset a run trains on (`RUN/dataset.json`, written before step 1): a
/// resume checks that it continues on the same data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetRecord {
    /// The prepared folder as given when the run started (made absolute).
    pub path: PathBuf,
    /// SHA-256 of its `manifest.json`: the dataset's identity (the manifest holds every
    /// source's checksum, the settings and the split).
    pub manifest_sha256: String,
}

impl DatasetRecord {
    /// The record of the prepared dataset at `data`.
    pub fn of(data: &Path) -> anyhow::Result<Self> {
        let manifest = data.join(dataset::manifest::MANIFEST_FILE);
        let manifest_sha256 = util::checksum::sha256_path(&manifest)?;
        let path = std::path::absolute(data).unwrap_or_else(|_| data.to_path_buf());
        Ok(Self {
            path,
            manifest_sha256,
        })
    }
}

/// The lock file of a run folder (held by the process training in it).
pub const RUN_LOCK: &str = ".run.lock";

/// Paths inside a run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates a fresh run folder at `root` (and its parents). Fails if `root` exists and is
    /// not empty: a run never overwrites another run's files.
    pub fn create_new(root: &Path) -> anyhow::Result<Self> {
        if root.exists() {
            let non_empty = std::fs::read_dir(root)
                .with_context(|| format!("reading run folder {}", root.display()))?
                .next()
                .is_some();
            if non_empty {
                bail!(
                    "run folder {} already exists and is not empty: pass --resume to continue \
                     that run, or choose another --run",
                    root.display()
                );
            }
        }
        let dir = Self {
            root: root.to_path_buf(),
        };
        for d in [dir.root.clone(), dir.samples_dir(), dir.checkpoints_dir()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        tracing::debug!(run = %root.display(), "run folder created");
        Ok(dir)
    }

    /// Opens an existing run folder for `--resume`: it must hold a `config.toml`.
    pub fn open_existing(root: &Path) -> anyhow::Result<Self> {
        let dir = Self {
            root: root.to_path_buf(),
        };
        if !dir.config().is_file() {
            bail!(
                "cannot resume {}: it holds no config.toml (not a run folder, or the run never \
                 started)",
                root.display()
            );
        }
        for d in [dir.samples_dir(), dir.checkpoints_dir()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(dir)
    }

    /// The run folder at `root` as seen by a data-parallel rank other than 0: it only reads
    /// what rank 0 wrote (no folder is created or checked here).
    pub fn shared(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the run's lock (`RUN/.run.lock`, see `util::lock`) for as long as the returned
    /// value lives: a second process (a `--resume` while the run still trains) fails at once,
    /// naming the holder.
    pub fn lock(&self) -> anyhow::Result<util::lock::FolderLock> {
        util::lock::lock_folder(&self.root, RUN_LOCK).map_err(|e| match e {
            util::lock::LockError::Locked { dir, holder } => anyhow::anyhow!(
                "{}: another process is training in this run folder ({holder}); wait for it \
                 to finish or stop it (SIGTERM checkpoints first), then --resume",
                dir.display()
            ),
            other => anyhow::Error::new(other),
        })
    }

    /// Removes the temporaries (`.NAME.PID.N.tmp`) that killed writes left in the run folder,
    /// its checkpoints and samples. Call with the run's lock held (no other writer).
    pub fn remove_temporaries(&self) -> anyhow::Result<usize> {
        let mut removed = 0;
        for dir in [
            self.root.clone(),
            self.checkpoints_dir(),
            self.samples_dir(),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !(name.starts_with('.') && name.ends_with(".tmp")) {
                    continue;
                }
                let path = entry.path();
                let gone = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                gone.with_context(|| format!("removing the leftover {}", path.display()))?;
                tracing::info!("removed the leftover {} of a killed write", path.display());
                removed += 1;
            }
        }
        Ok(removed)
    }
    /// `dataset.json`: the [`DatasetRecord`] of the data the run trains on.
    pub fn dataset_record(&self) -> PathBuf {
        self.root.join("dataset.json")
    }

    /// The recorded dataset, `None` for runs written before the record existed.
    pub fn read_dataset_record(&self) -> anyhow::Result<Option<DatasetRecord>> {
        let path = self.dataset_record();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// `config.toml`: the resolved configuration.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `train.log`: the human log.
    pub fn log(&self) -> PathBuf {
        self.root.join("train.log")
    }
    /// `metrics.jsonl`: machine-readable events.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// `curves.png`.
    pub fn curves(&self) -> PathBuf {
        self.root.join("curves.png")
    }
    pub fn samples_dir(&self) -> PathBuf {
        self.root.join("samples")
    }
    /// `samples/step_NNNNNN.png`.
    pub fn sample(&self, step: u64) -> PathBuf {
        self.samples_dir().join(format!("step_{step:06}.png"))
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// `checkpoints/NAME` (latest, best, final).
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.checkpoints_dir().join(name)
    }
    /// `debug/step_N`: the snapshot of a failed step.
    pub fn debug_step(&self, step: u64) -> PathBuf {
        self.root.join("debug").join(format!("step_{step}"))
    }
}

/// `base` if it does not exist or is empty, else the first free `base-2`, `base-3`, ...
pub fn next_free(base: &Path) -> PathBuf {
    let free = |p: &Path| {
        !p.exists()
            || std::fs::read_dir(p)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false)
    };
    if free(base) {
        return base.to_path_buf();
    }
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    (2u32..)
        .map(|i| base.with_file_name(format!("{name}-{i}")))
        .find(|p| free(p))
        .unwrap_or_else(|| base.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_non_empty_folder_and_next_free_skips_it() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("demo");
        assert_eq!(next_free(&base), base);
        let run = RunDir::create_new(&base).unwrap();
        assert!(run.samples_dir().is_dir() && run.checkpoints_dir().is_dir());
        // created but holding only empty sub-folders: not empty any more
        let err = RunDir::create_new(&base).unwrap_err().to_string();
        assert!(err.contains("--resume"), "{err}");
        assert_eq!(next_free(&base), tmp.path().join("demo-2"));
        std::fs::create_dir_all(tmp.path().join("demo-2/x")).unwrap();
        assert_eq!(next_free(&base), tmp.path().join("demo-3"));
        // resume needs a config
        assert!(RunDir::open_existing(&base).is_err());
        std::fs::write(run.config(), "").unwrap();
        assert!(RunDir::open_existing(&base).is_ok());
        assert_eq!(run.sample(12), base.join("samples/step_000012.png"));
    }
}
