//! Writing a phantom set in the raw-dataset layout (see DESIGN.md, "Files on disk"):
//!
//! ```text
//! OUT/
//!   ncct/case_000.nii.gz            the pair that `prepare` reads
//!   ctpa/case_000.nii.gz
//!   truth/ctpa_aligned/case_000.nii.gz   the CTPA before the motion (aligned with the NCCT)
//!   truth/displacement/case_000.nii.gz   the motion (ITK displacement field, mm, LPS)
//!   truth/{body,lung,vessels,veins,emboli,blood}/case_000.nii.gz   uint8 masks
//!   phantom.json                    the configuration and every case's parameters
//!   preview/case_000.png            (optional) a montage to look at
//! ```
//!
//! The lung masks are written under `truth/`, not `lung/`: a raw dataset's `lung/` folder
//! holds the user's own masks, which `prepare` would use instead of computing its own, and a
//! phantom set is there to exercise and score the classical lung mask too. Copy
//! `truth/lung` to `lung/` to emulate a user who brings masks.
//!
//! Every file is written atomically; `phantom.json` is written last, so a set without it is
//! incomplete. Nothing is ever deleted.

use super::montage::montage;
use super::{case_name, generate_case, PhantomCase, PhantomConfig, PhantomError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tracing::{debug, info, warn};
use util::atomic::write_atomic;
use volume::io::nifti::{write_nifti, write_nifti_displacement, write_nifti_mask};

/// Format tag of `phantom.json`.
pub const PHANTOM_FORMAT: &str = "ncct2ctpa-phantom";
/// Version of `phantom.json`.
pub const PHANTOM_FORMAT_VERSION: u32 = 1;

/// The folders a phantom set writes, relative to its root.
pub const CASE_FOLDERS: [&str; 10] = [
    "ncct",
    "ctpa",
    "truth/ctpa_aligned",
    "truth/displacement",
    "truth/body",
    "truth/lung",
    "truth/vessels",
    "truth/veins",
    "truth/emboli",
    "truth/blood",
];

/// How many cases and whether existing files may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    pub cases: usize,
    /// Replace files of an existing, non-empty output folder (only the files this set
    /// writes; nothing else is touched).
    pub overwrite: bool,
    /// Also write `preview/CASE.png`, a montage of each pair (see [`super::montage`]).
    pub preview: bool,
}

/// What was written for one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseSummary {
    pub name: String,
    pub emboli: usize,
    pub max_displacement_mm: f64,
    /// Seconds to generate (not write) the case.
    pub generate_s: f64,
}

/// What [`write_dataset`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub root: PathBuf,
    pub cases: Vec<CaseSummary>,
    pub seconds: f64,
}

#[derive(Serialize)]
struct PhantomJson<'a> {
    format: &'a str,
    version: u32,
    config: &'a PhantomConfig,
    layout: &'a [&'a str],
    cases: Vec<super::CaseParams>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PhantomError + '_ {
    move |source| PhantomError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a non-empty `root` unless `overwrite`; creates the case folders.
fn prepare_root(root: &Path, overwrite: bool) -> Result<(), PhantomError> {
    if root.exists() {
        if !root.is_dir() {
            return Err(PhantomError::Output {
                path: root.to_path_buf(),
                message: "exists and is not a folder".into(),
            });
        }
        let non_empty = std::fs::read_dir(root)
            .map_err(io_err(root))?
            .next()
            .is_some();
        if non_empty && !overwrite {
            return Err(PhantomError::Output {
                path: root.to_path_buf(),
                message: "folder exists and is not empty; refusing to overwrite (choose another \
                          folder, or allow replacing this set's files)"
                    .into(),
            });
        }
    }
    for f in CASE_FOLDERS {
        let dir = root.join(f);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    }
    Ok(())
}

/// Writes one case's files under `root`.
pub fn write_case(root: &Path, case: &PhantomCase) -> Result<(), PhantomError> {
    let file = |folder: &str| {
        root.join(folder)
            .join(format!("{}.nii.gz", case.params.name))
    };
    write_nifti(&file("ncct"), &case.ncct)?;
    write_nifti(&file("ctpa"), &case.ctpa)?;
    write_nifti(&file("truth/ctpa_aligned"), &case.ctpa_aligned)?;
    write_nifti_displacement(
        &file("truth/displacement"),
        &case.ncct.geometry,
        &case.displacement,
    )?;
    for (folder, mask) in [
        ("truth/body", &case.body),
        ("truth/lung", &case.lung),
        ("truth/vessels", &case.arteries),
        ("truth/veins", &case.veins),
        ("truth/emboli", &case.emboli),
        ("truth/blood", &case.blood),
    ] {
        write_nifti_mask(&file(folder), mask)?;
    }
    debug!(case = %case.params.name, root = %root.display(), "case written");
    Ok(())
}

/// Generates `opts.cases` cases of `cfg` and writes them under `root` in the raw-dataset
/// layout; `progress` is called after each case.
pub fn write_dataset(
    root: &Path,
    cfg: &PhantomConfig,
    opts: &WriteOptions,
    progress: &(dyn Fn(&CaseSummary) + Sync),
) -> Result<DatasetSummary, PhantomError> {
    cfg.validate()?;
    if opts.cases == 0 {
        return Err(PhantomError::Config("at least one case is needed".into()));
    }
    prepare_root(root, opts.overwrite)?;
    let start = Instant::now();
    let mut params = Vec::with_capacity(opts.cases);
    let mut summaries = Vec::with_capacity(opts.cases);
    for index in 0..opts.cases {
        let t = Instant::now();
        let case = generate_case(cfg, index)?;
        let generate_s = t.elapsed().as_secs_f64();
        write_case(root, &case)?;
        if opts.preview {
            let dir = root.join("preview");
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            montage(&case)
                .save_png(&dir.join(format!("{}.png", case.params.name)))
                .map_err(volume::VolumeError::from)?;
        }
        let summary = CaseSummary {
            name: case.params.name.clone(),
            emboli: case.params.emboli.len(),
            max_displacement_mm: case.params.max_displacement_mm,
            generate_s,
        };
        progress(&summary);
        summaries.push(summary);
        params.push(case.params);
    }
    warn_about_strangers(root, opts.cases);
    let json = PhantomJson {
        format: PHANTOM_FORMAT,
        version: PHANTOM_FORMAT_VERSION,
        config: cfg,
        layout: &CASE_FOLDERS,
        cases: params,
    };
    let path = root.join("phantom.json");
    let text = serde_json::to_vec_pretty(&json).map_err(|e| PhantomError::Output {
        path: path.clone(),
        message: format!("could not encode: {e}"),
    })?;
    write_atomic(&path, |w| std::io::Write::write_all(w, &text))
        .map_err(volume::VolumeError::from)?;
    let seconds = start.elapsed().as_secs_f64();
    info!(cases = opts.cases, seconds, root = %root.display(), "phantom set written");
    Ok(DatasetSummary {
        root: root.to_path_buf(),
        cases: summaries,
        seconds,
    })
}

/// Warns about case files in `ncct/` that this set did not write (left from an earlier,
/// larger set when overwriting): `prepare` would pair them too.
fn warn_about_strangers(root: &Path, cases: usize) {
    let ours: std::collections::HashSet<String> = (0..cases)
        .map(|i| format!("{}.nii.gz", case_name(i)))
        .collect();
    let Ok(entries) = std::fs::read_dir(root.join("ncct")) else {
        return;
    };
    let strangers: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !ours.contains(n))
        .collect();
    if !strangers.is_empty() {
        warn!(
            "{}: {} file(s) in ncct/ are not part of this phantom set and were left alone \
             (e.g. {}); prepare will see them too",
            root.display(),
            strangers.len(),
            strangers[0]
        );
    }
}
