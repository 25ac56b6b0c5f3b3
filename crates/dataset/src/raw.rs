//! Discovery and pairing of a raw NCCT/CTPA dataset.
//!
//! A raw dataset is the folder users bring (see DESIGN.md, "Files on disk"):
//!
//! ```text
//! DATASET/
//!   ncct/CASE.nii.gz   or   ncct/CASE/   (a folder holding one DICOM series)
//!   ctpa/CASE.nii.gz   or   ctpa/CASE/
//!   lung/CASE.nii.gz   (optional: the user's own lung masks, any grid overlapping the NCCT)
//! ```
//!
//! Cases pair by name. [`discover`] only looks at names and folder structure (it reads no
//! voxels, so it is instant on a large dataset); everything it cannot use is reported in
//! [`Discovery::skipped`] with the reason, because silently dropped cases are the most
//! confusing failure a data pipeline can have. Reading and checking the volumes happens in
//! [`crate::prepare`], which adds its own per-case failures to the report.
//!
//! Rules:
//! - `CASE.nii` and `CASE.nii.gz` are NIfTI files; a sub-folder `CASE/` is a DICOM series
//!   (it must hold at least one file).
//! - Names starting with `.` (`.DS_Store`, editor swap files) are ignored without a report.
//! - Two entries naming the same case in one folder (`a.nii` and `a.nii.gz`, or `a.nii.gz`
//!   and `a/`) make that case ambiguous: it is skipped, naming both entries, rather than
//!   guessing which one the user meant.
//! - A case present in only one of `ncct/` and `ctpa/` is skipped ("missing half").
//! - A lung mask without a pair is reported; an ambiguous lung mask skips its case.

use crate::cases::{list_cases, Listing};
pub use crate::cases::{Skipped, Source, SourceKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tracing::debug;

/// Errors that stop discovery as a whole (per-case problems are [`Skipped`] entries instead).
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The dataset folder or one of its required sub-folders cannot be listed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A sub-folder cannot be listed.
    #[error(transparent)]
    List(#[from] crate::cases::ListError),
    /// A required sub-folder (`ncct/` or `ctpa/`) is missing.
    #[error("{path}: missing folder (a raw dataset holds ncct/CASE.nii.gz and ctpa/CASE.nii.gz, or DICOM folders ncct/CASE/ and ctpa/CASE/)")]
    MissingFolder { path: PathBuf },
    /// Nothing could be paired.
    #[error("{root}: no usable NCCT/CTPA pairs ({} entries skipped{})", skipped.len(), summarize(skipped))]
    NoPairs {
        root: PathBuf,
        skipped: Vec<Skipped>,
    },
}

fn summarize(skipped: &[Skipped]) -> String {
    let shown: Vec<String> = skipped.iter().take(3).map(|s| s.to_string()).collect();
    if shown.is_empty() {
        String::new()
    } else {
        let more = skipped.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        format!(": {}{tail}", shown.join("; "))
    }
}

/// A usable case: an NCCT and a CTPA with the same name, and optionally a lung mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasePair {
    pub case: String,
    pub ncct: Source,
    pub ctpa: Source,
    /// The user's lung mask (NIfTI), used instead of the computed one.
    pub lung: Option<PathBuf>,
}

/// The result of [`discover`]: pairs sorted by case name, and everything skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    pub root: PathBuf,
    pub pairs: Vec<CasePair>,
    pub skipped: Vec<Skipped>,
}

/// Finds the cases of the raw dataset at `root` and pairs them by name.
///
/// Errors only when the folder structure is unusable (missing `ncct/` or `ctpa/`, unreadable
/// folder) or when no pair is left; per-case problems are reported in [`Discovery::skipped`].
pub fn discover(root: &Path) -> Result<Discovery, RawError> {
    if !root.is_dir() {
        return Err(match std::fs::metadata(root) {
            Err(source) => RawError::Io {
                path: root.to_path_buf(),
                source,
            },
            Ok(_) => RawError::Io {
                path: root.to_path_buf(),
                source: std::io::Error::other("not a folder"),
            },
        });
    }
    let required = |sub: &str| {
        let p = root.join(sub);
        if p.is_dir() {
            Ok(p)
        } else {
            Err(RawError::MissingFolder { path: p })
        }
    };
    let ncct_dir = required("ncct")?;
    let ctpa_dir = required("ctpa")?;
    let lung_dir = root.join("lung");

    let ncct = list_cases(&ncct_dir, true)?;
    let ctpa = list_cases(&ctpa_dir, true)?;
    let lung = if lung_dir.is_dir() {
        list_cases(&lung_dir, false)?
    } else {
        Listing::default()
    };

    let mut skipped = Vec::new();
    for (sub, listing) in [("ncct", &ncct), ("ctpa", &ctpa), ("lung", &lung)] {
        for s in &listing.skipped {
            skipped.push(Skipped {
                case: s.case.clone(),
                reason: format!("{sub}/: {}", s.reason),
            });
        }
    }

    let mut names: Vec<&String> = ncct.cases.keys().chain(ctpa.cases.keys()).collect();
    names.sort();
    names.dedup();

    let mut pairs = Vec::new();
    for case in names {
        let n = ncct.cases.get(case).map(Vec::as_slice).unwrap_or_default();
        let c = ctpa.cases.get(case).map(Vec::as_slice).unwrap_or_default();
        let l = lung.cases.get(case).map(Vec::as_slice).unwrap_or_default();
        let skip = |reason: String| Skipped {
            case: case.clone(),
            reason,
        };
        let problem = if n.len() > 1 {
            Some(crate::cases::ambiguous(n))
        } else if c.len() > 1 {
            Some(crate::cases::ambiguous(c))
        } else if l.len() > 1 {
            Some(crate::cases::ambiguous(l))
        } else if n.is_empty() {
            Some(format!(
                "missing half: {} has no NCCT in {}",
                c[0].path.display(),
                ncct_dir.display()
            ))
        } else if c.is_empty() {
            Some(format!(
                "missing half: {} has no CTPA in {}",
                n[0].path.display(),
                ctpa_dir.display()
            ))
        } else {
            None
        };
        if let Some(reason) = problem {
            debug!(case = %case, %reason, "skipped");
            skipped.push(skip(reason));
            continue;
        }
        pairs.push(CasePair {
            case: case.clone(),
            ncct: n[0].clone(),
            ctpa: c[0].clone(),
            lung: l.first().map(|s| s.path.clone()),
        });
    }
    for (case, sources) in &lung.cases {
        if !ncct.cases.contains_key(case) && !ctpa.cases.contains_key(case) {
            skipped.push(Skipped {
                case: case.clone(),
                reason: format!(
                    "{}: lung mask of a case with no NCCT or CTPA",
                    sources[0].path.display()
                ),
            });
        }
    }

    if pairs.is_empty() {
        return Err(RawError::NoPairs {
            root: root.to_path_buf(),
            skipped,
        });
    }
    Ok(Discovery {
        root: root.to_path_buf(),
        pairs,
        skipped,
    })
}
