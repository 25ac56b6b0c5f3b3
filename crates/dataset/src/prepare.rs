//! `prepare`: a raw paired dataset in, a prepared dataset (manifest + slice stores) out.
//!
//! For every pair found by [`crate::raw::discover`], in parallel over cases:
//! 1. SHA-256 of the sources; a case whose store already holds the same sources prepared with
//!    the same settings and tool version is **reused** (and reported as such);
//! 2. both volumes read (NIfTI or DICOM) and checked ([`checks::check_pair`]);
//! 3. optionally the CTPA rigidly aligned to the NCCT (`volume::register`);
//! 4. both put on the common grid ([`checks::target_grid`]: the NCCT's, with the coarser slice
//!    spacing of the two by default), the CTPA through the found transform, so it is
//!    interpolated once;
//! 5. body and lung masks computed on the NCCT (`volume::masks`), unless the user supplied a
//!    lung mask;
//! 6. the case's store written whole and renamed into place ([`crate::store::write_case`]).
//!
//! The split is decided before any case is processed, from the names of all discovered pairs
//! (so a bad split file fails in a second, not after an hour, and a case that fails does not
//! reshuffle the others). Progress is written atomically after every case to
//! `manifest.partial.json` (status `in_progress`); `manifest.json` is replaced, atomically,
//! only at the end of a prepare in which no case failed, so the dataset a training reads
//! (an earlier complete prepare) stays in force until a new one succeeds.
//!
//! A case that fails (unreadable file, bad geometry, a full disk...) is reported with its
//! reason, and the prepare fails as a whole ([`PrepareError::CasesFailed`], listing them) after
//! every other case was prepared (they are reused by the next run); with
//! [`PrepareOptions::allow_failed_cases`] the manifest is written without them instead.
//!
//! The whole run holds an exclusive lock on the output folder ([`lock`]): a second `prepare`
//! into the same folder fails at once, naming the folder and the run that holds it.

mod case;
pub mod checks;
pub mod lock;

pub use case::{prepare_case, CaseError, CaseOutcome, FILL_HU};

use crate::manifest::split::{apply_split_file, read_split_file, seeded_split, SplitError};
use crate::manifest::{
    CaseEntry, CaseSettings, IntensityWindow, Manifest, ManifestStatus, Split, SplitFractions,
    SplitSpec, FORMAT, FORMAT_VERSION, MANIFEST_FILE, SPLIT_FILE, TOOL_VERSION,
};
use crate::raw::{Discovery, Skipped};
use crate::store::{case_dir, StoreError, CASES_DIR};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use util::atomic::write_atomic;
use volume::VolumeError;

/// How to split cases into train/val/test.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitChoice {
    Seeded {
        seed: u64,
        fractions: SplitFractions,
    },
    /// A split file (see [`crate::manifest::split::read_split_file`]).
    File(PathBuf),
}

impl Default for SplitChoice {
    fn default() -> Self {
        SplitChoice::Seeded {
            seed: 0,
            fractions: SplitFractions::default(),
        }
    }
}

/// Everything `prepare` needs besides the discovered pairs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PrepareOptions {
    pub window: IntensityWindow,
    pub settings: CaseSettings,
    pub split: SplitChoice,
    /// Cases prepared at once (each holds a few copies of its volumes in memory: about
    /// 2 GB for a 512 x 512 x 400 pair); 0 means one per CPU core.
    pub jobs: usize,
    /// Write the manifest without the cases that failed (and succeed) instead of failing.
    pub allow_failed_cases: bool,
}

/// The progress of a running (or failed) prepare, rewritten after every case; the manifest
/// proper is only written by a prepare that succeeds.
pub const PROGRESS_FILE: &str = "manifest.partial.json";

/// Errors that stop `prepare` as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no case could be prepared ({} failed{})", raw.display(), failed.len(),
        failed.first().map(|f| format!("; first: {f}")).unwrap_or_default())]
    NoUsableCases { raw: PathBuf, failed: Vec<Skipped> },
    /// Some cases failed: the manifest was not replaced (see the module docs).
    #[error("{} of {total} cases failed, so {} was not replaced (the cases that were \
             prepared are reused by the next run; fix or remove the failed ones, or pass \
             --allow-failed-cases to go on without them): {}", failed.len(),
             manifest.display(), failed.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
    CasesFailed {
        manifest: PathBuf,
        total: usize,
        failed: Vec<Skipped>,
        /// The per-case report, for the table.
        cases: Vec<CaseReport>,
    },
    #[error("could not start {jobs} worker threads: {message}")]
    Threads { jobs: usize, message: String },
    /// Another run holds the folder's lock ([`lock::lock_output`]).
    #[error("{}: another prepare is writing into this folder ({holder}); wait for it to \
             finish, or choose another output folder", dir.display())]
    Locked { dir: PathBuf, holder: String },
}

/// What happened to one case, for the report table.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseReport {
    pub case: String,
    pub split: Split,
    pub status: CaseStatus,
    pub seconds: f64,
}

/// Outcome of one case.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseStatus {
    Prepared(Box<crate::manifest::CaseMeta>),
    Reused(Box<crate::manifest::CaseMeta>),
    /// Left out, with the reason (the full cause chain).
    Failed(String),
}

impl CaseReport {
    pub fn meta(&self) -> Option<&crate::manifest::CaseMeta> {
        match &self.status {
            CaseStatus::Prepared(m) | CaseStatus::Reused(m) => Some(m),
            CaseStatus::Failed(_) => None,
        }
    }
}

/// The result of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareReport {
    pub out: PathBuf,
    pub manifest: Manifest,
    /// One per discovered pair, in case-name order.
    pub cases: Vec<CaseReport>,
    /// What discovery left out.
    pub discovery_skipped: Vec<Skipped>,
    pub elapsed: Duration,
}

impl PrepareReport {
    pub fn count(&self, f: impl Fn(&CaseStatus) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.status)).count()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

fn assign_splits(
    discovery: &Discovery,
    choice: &SplitChoice,
) -> Result<(SplitSpec, BTreeMap<String, Split>), PrepareError> {
    let names: Vec<String> = discovery.pairs.iter().map(|p| p.case.clone()).collect();
    Ok(match choice {
        SplitChoice::Seeded { seed, fractions } => (
            SplitSpec::Seeded {
                seed: *seed,
                fractions: *fractions,
            },
            seeded_split(&names, *seed, *fractions),
        ),
        SplitChoice::File(path) => {
            let file = read_split_file(path)?;
            let unused: Vec<&String> = file.keys().filter(|c| !names.contains(c)).collect();
            if !unused.is_empty() {
                warn!(
                    "{}: {} case(s) listed but not in the raw dataset: {:?}",
                    path.display(),
                    unused.len(),
                    unused
                );
            }
            (
                SplitSpec::File { path: path.clone() },
                apply_split_file(path, &file, &names)?,
            )
        }
    })
}

/// Removes leftovers of an interrupted run inside `cases/` (our own hidden temporaries and
/// moved-aside stores) and warns about case folders that are not in the raw dataset.
fn tidy_cases_dir(out: &Path, discovery: &Discovery) -> Result<(), PrepareError> {
    let cases = out.join(CASES_DIR);
    if !cases.is_dir() {
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PrepareError::Io { path, source }
    };
    for entry in std::fs::read_dir(&cases).map_err(io(&cases))? {
        let entry = entry.map_err(io(&cases))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') && (name.ends_with(".tmp") || name.contains(".old-")) {
            info!(
                "removing the leftover of an interrupted run: {}",
                path.display()
            );
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        } else if !name.starts_with('.') && !discovery.pairs.iter().any(|p| p.case == name) {
            warn!(
                "{}: not a case of the raw dataset any more; left in place, not in the manifest",
                path.display()
            );
        }
    }
    Ok(())
}

struct Progress {
    entries: BTreeMap<String, CaseEntry>,
    failed: Vec<Skipped>,
}

fn build_manifest(
    discovery: &Discovery,
    opts: &PrepareOptions,
    split: &SplitSpec,
    progress: &Progress,
    status: ManifestStatus,
) -> Manifest {
    let mut skipped = discovery.skipped.clone();
    skipped.extend(progress.failed.iter().cloned());
    Manifest {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        tool_version: TOOL_VERSION.to_owned(),
        status,
        raw_dir: discovery.root.clone(),
        window: opts.window,
        settings: opts.settings.clone(),
        split: split.clone(),
        cases: progress.entries.values().cloned().collect(),
        skipped,
    }
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), PrepareError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| PrepareError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, |w| w.write_all(&bytes)).map_err(volume::VolumeError::from)?;
    Ok(())
}

/// Prepares the discovered pairs into `out`. `on_case` is called (from worker threads) as each
/// case finishes, for progress display.
pub fn prepare(
    discovery: &Discovery,
    out: &Path,
    opts: &PrepareOptions,
    on_case: &(dyn Fn(&CaseReport) + Sync),
) -> Result<PrepareReport, PrepareError> {
    let started = Instant::now();
    let (split_spec, splits) = assign_splits(discovery, &opts.split)?;
    std::fs::create_dir_all(out).map_err(|source| PrepareError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    // Held to the end of this function: nothing below may run beside another prepare.
    let _lock = lock::lock_output(out)?;
    tidy_cases_dir(out, discovery)?;

    let manifest_path = out.join(MANIFEST_FILE);
    let progress_path = out.join(PROGRESS_FILE);
    let state = Mutex::new(Progress {
        entries: BTreeMap::new(),
        failed: Vec::new(),
    });
    let jobs = if opts.jobs == 0 {
        rayon::current_num_threads()
    } else {
        opts.jobs
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| PrepareError::Threads {
            jobs,
            message: e.to_string(),
        })?;
    info!(
        pairs = discovery.pairs.len(),
        jobs,
        out = %out.display(),
        "preparing"
    );

    let reports: Vec<Result<CaseReport, PrepareError>> = pool.install(|| {
        discovery
            .pairs
            .par_iter()
            .map(|pair| {
                let t0 = Instant::now();
                let split = splits.get(&pair.case).copied().unwrap_or(Split::Train);
                let result = prepare_case(out, pair, &opts.settings);
                let seconds = t0.elapsed().as_secs_f64();
                let status = match result {
                    Ok(CaseOutcome::Prepared(m)) => CaseStatus::Prepared(Box::new(m)),
                    Ok(CaseOutcome::Reused(m)) => CaseStatus::Reused(Box::new(m)),
                    Err(e) => {
                        let reason = error_chain(&e);
                        warn!(case = %pair.case, "failed: {reason}");
                        CaseStatus::Failed(reason)
                    }
                };
                let report = CaseReport {
                    case: pair.case.clone(),
                    split,
                    status,
                    seconds,
                };
                {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    match &report.status {
                        CaseStatus::Prepared(m) | CaseStatus::Reused(m) => {
                            st.entries.insert(
                                pair.case.clone(),
                                CaseEntry {
                                    split,
                                    dir: Path::new(CASES_DIR).join(&pair.case),
                                    meta: (**m).clone(),
                                },
                            );
                        }
                        CaseStatus::Failed(reason) => st.failed.push(Skipped {
                            case: pair.case.clone(),
                            reason: reason.clone(),
                        }),
                    }
                    let interim = build_manifest(
                        discovery,
                        opts,
                        &split_spec,
                        &st,
                        ManifestStatus::InProgress,
                    );
                    write_json(&progress_path, &interim)?;
                }
                on_case(&report);
                Ok(report)
            })
            .collect()
    });
    let mut cases = reports.into_iter().collect::<Result<Vec<_>, _>>()?;
    cases.sort_by(|a, b| a.case.cmp(&b.case));

    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    if st.entries.is_empty() {
        return Err(PrepareError::NoUsableCases {
            raw: discovery.root.clone(),
            failed: st.failed,
        });
    }
    if !st.failed.is_empty() && !opts.allow_failed_cases {
        return Err(PrepareError::CasesFailed {
            manifest: manifest_path,
            total: discovery.pairs.len(),
            failed: st.failed,
            cases,
        });
    }
    let manifest = build_manifest(discovery, opts, &split_spec, &st, ManifestStatus::Complete);
    let split_file: BTreeMap<&str, Split> = manifest
        .cases
        .iter()
        .map(|c| (c.meta.case.as_str(), c.split))
        .collect();
    write_json(&out.join(SPLIT_FILE), &split_file)?;
    write_json(&manifest_path, &manifest)?;
    if let Err(e) = std::fs::remove_file(&progress_path) {
        debug!("{}: {e}", progress_path.display());
    }
    debug!(
        cases = manifest.cases.len(),
        dir = %case_dir(out, "").display(),
        "manifest complete"
    );
    Ok(PrepareReport {
        out: out.to_path_buf(),
        manifest,
        cases,
        discovery_skipped: discovery.skipped.clone(),
        elapsed: started.elapsed(),
    })
}
