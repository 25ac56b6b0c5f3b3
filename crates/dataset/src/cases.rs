//! The one case listing of ncct2ctpa: a folder that holds one volume per case, as `prepare`
//! (the raw dataset's `ncct/`, `ctpa/` and `lung/`), `predict` (a folder of NCCTs) and
//! `evaluate` (predictions, targets, NCCTs) all read it.
//!
//! Rules:
//! - `CASE.nii` and `CASE.nii.gz` are NIfTI files; a sub-folder `CASE/` is a DICOM series
//!   (it must hold at least one file);
//! - names starting with `.` (`.DS_Store`, editor swap files) are ignored without a report;
//! - anything else is reported in [`Listing::skipped`] with the reason, never silently
//!   dropped;
//! - two entries naming one case (`a.nii` and `a.nii.gz`, or `a.nii.gz` and `a/`) are both
//!   kept: the caller decides (prepare skips the case, evaluate and predict stop), naming both.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use tracing::debug;
use volume::io::{is_nifti_path, nifti_stem};

/// How a volume is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A `.nii` or `.nii.gz` file.
    Nifti,
    /// A folder holding a DICOM series.
    DicomDir,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            SourceKind::Nifti => "NIfTI",
            SourceKind::DicomDir => "DICOM folder",
        })
    }
}

/// One volume of a case: where it is and how it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub path: PathBuf,
    pub kind: SourceKind,
}

/// Something that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The case name (or the entry's file name when no case name can be derived).
    pub case: String,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.case, self.reason)
    }
}

/// What a folder of cases holds: case name -> the entries naming it (more than one: the case
/// is ambiguous, and each caller says so in its own way), and the entries that name no case.
#[derive(Debug, Default)]
pub struct Listing {
    pub cases: BTreeMap<String, Vec<Source>>,
    pub skipped: Vec<Skipped>,
}

impl Listing {
    /// The case's one entry, or `None` when it has none; errors name every entry of an
    /// ambiguous case.
    pub fn single(&self, case: &str) -> Result<Option<&Source>, String> {
        match self.cases.get(case).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([one]) => Ok(Some(one)),
            Some(many) => Err(ambiguous(many)),
        }
    }
}

/// A folder that cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ListError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Lists the cases of `dir`. `allow_dicom` is false for mask folders (masks are NIfTI).
pub fn list_cases(dir: &Path, allow_dicom: bool) -> Result<Listing, ListError> {
    let io = |source| ListError {
        path: dir.to_path_buf(),
        source,
    };
    let mut listing = Listing::default();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            listing.skipped.push(Skipped {
                case: entry.file_name().to_string_lossy().into_owned(),
                reason: format!("{}: file name is not valid UTF-8", path.display()),
            });
            continue;
        };
        if name.starts_with('.') {
            debug!(path = %path.display(), "ignoring hidden entry");
            continue;
        }
        // `metadata` follows symlinks, so a linked file or folder counts as what it points to.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                listing.skipped.push(Skipped {
                    case: name.clone(),
                    reason: format!("{}: {e}", path.display()),
                });
                continue;
            }
        };
        let (case, kind) = if meta.is_dir() {
            if !allow_dicom {
                listing.skipped.push(Skipped {
                    case: name.clone(),
                    reason: format!(
                        "{}: a folder; masks must be NIfTI files (CASE.nii.gz)",
                        path.display()
                    ),
                });
                continue;
            }
            match folder_has_files(&path) {
                Ok(true) => (name.clone(), SourceKind::DicomDir),
                Ok(false) => {
                    listing.skipped.push(Skipped {
                        case: name.clone(),
                        reason: format!("{}: empty folder (no DICOM files)", path.display()),
                    });
                    continue;
                }
                Err(e) => {
                    listing.skipped.push(Skipped {
                        case: name.clone(),
                        reason: format!("{}: {e}", path.display()),
                    });
                    continue;
                }
            }
        } else if is_nifti_path(&path) {
            match nifti_stem(&path) {
                Some(stem) if !stem.is_empty() => (stem.to_owned(), SourceKind::Nifti),
                _ => {
                    listing.skipped.push(Skipped {
                        case: name.clone(),
                        reason: format!("{}: no case name before .nii", path.display()),
                    });
                    continue;
                }
            }
        } else {
            listing.skipped.push(Skipped {
                case: name.clone(),
                reason: format!(
                    "{}: not a NIfTI file (.nii, .nii.gz) or a DICOM folder",
                    path.display()
                ),
            });
            continue;
        };
        debug!(case = %case, %kind, path = %path.display(), "found");
        listing
            .cases
            .entry(case)
            .or_default()
            .push(Source { path, kind });
    }
    Ok(listing)
}

fn folder_has_files(dir: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = std::fs::metadata(entry.path())?;
        if ty.is_file() || (ty.is_dir() && folder_has_files(&entry.path())?) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// "ambiguous: A and B all name this case; keep one".
pub fn ambiguous(sources: &[Source]) -> String {
    let names: Vec<String> = sources
        .iter()
        .map(|s| s.path.display().to_string())
        .collect();
    format!(
        "ambiguous: {} all name this case; keep one",
        names.join(" and ")
    )
}
