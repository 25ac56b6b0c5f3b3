//! Finding the cases of a prediction, target or NCCT folder and pairing them by name.
//!
//! A folder holds one volume per case: `CASE.nii.gz` / `CASE.nii`, or a sub-folder `CASE/`
//! holding a DICOM series (what `predict --format dicom` writes). Other files (logs, the
//! evaluation's own CSV and JSON, which by default land in the prediction folder) are ignored,
//! and so are hidden entries. Two entries naming the same case are an error: guessing which
//! one the user meant would score the wrong volume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tracing::debug;
use volume::io::{is_nifti_path, nifti_stem};

use super::EvalError;

/// Case name -> volume path (NIfTI file or DICOM folder), sorted by name.
pub type CaseFiles = BTreeMap<String, PathBuf>;

/// Lists the volumes of `dir` by case name.
pub fn list_cases(dir: &Path) -> Result<CaseFiles, EvalError> {
    let io = |source| EvalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.is_dir() {
        return Err(EvalError::NotAFolder(dir.to_path_buf()));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    let mut cases = CaseFiles::new();
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            debug!(path = %path.display(), "ignoring a name that is not UTF-8");
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let case = if path.is_dir() {
            name
        } else if is_nifti_path(&path) {
            match nifti_stem(&path) {
                Some(stem) if !stem.is_empty() => stem.to_owned(),
                _ => continue,
            }
        } else {
            debug!(path = %path.display(), "ignoring: not a NIfTI file or a DICOM folder");
            continue;
        };
        if let Some(first) = cases.get(&case) {
            return Err(EvalError::Ambiguous {
                case,
                first: first.clone(),
                second: path,
            });
        }
        cases.insert(case, path);
    }
    debug!(dir = %dir.display(), n = cases.len(), "listed cases");
    Ok(cases)
}

/// The NIfTI file of `case` in a mask folder (`CASE.nii.gz` or `CASE.nii`).
pub fn mask_file(dir: &Path, case: &str, region: &str) -> Result<PathBuf, EvalError> {
    let gz = dir.join(format!("{case}.nii.gz"));
    let plain = dir.join(format!("{case}.nii"));
    match (gz.is_file(), plain.is_file()) {
        (true, false) => Ok(gz),
        (false, true) => Ok(plain),
        (true, true) => Err(EvalError::Ambiguous {
            case: case.to_owned(),
            first: gz,
            second: plain,
        }),
        (false, false) => Err(EvalError::MissingFile {
            case: case.to_owned(),
            what: format!("{region} mask"),
            dir: dir.to_path_buf(),
        }),
    }
}

/// One case to score: its prediction, target and (optionally) NCCT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasePaths {
    pub case: String,
    pub pred: PathBuf,
    pub target: PathBuf,
    pub ncct: Option<PathBuf>,
}

/// Pairs predictions with targets (and NCCTs) by case name.
///
/// Predictions define the cases: a prediction without a target is reported in the returned
/// list of unpaired names; targets without a prediction are not (scoring a subset, such as the
/// test split, is normal). When an NCCT folder is given every scored case needs an NCCT, or
/// the baseline would be averaged over other cases than the model.
pub fn pair(
    pred_dir: &Path,
    target_dir: &Path,
    ncct_dir: Option<&Path>,
) -> Result<(Vec<CasePaths>, Vec<String>), EvalError> {
    let preds = list_cases(pred_dir)?;
    let targets = list_cases(target_dir)?;
    let nccts = ncct_dir.map(list_cases).transpose()?;
    let mut pairs = Vec::new();
    let mut unpaired = Vec::new();
    for (case, pred) in preds {
        let Some(target) = targets.get(&case) else {
            unpaired.push(case);
            continue;
        };
        let ncct = match (&nccts, ncct_dir) {
            (Some(n), Some(dir)) => {
                Some(
                    n.get(&case)
                        .cloned()
                        .ok_or_else(|| EvalError::MissingFile {
                            case: case.clone(),
                            what: "NCCT (the baseline needs one for every scored case)".into(),
                            dir: dir.to_path_buf(),
                        })?,
                )
            }
            _ => None,
        };
        pairs.push(CasePaths {
            case,
            pred,
            target: target.clone(),
            ncct,
        });
    }
    if pairs.is_empty() {
        return Err(EvalError::NoPairs {
            pred: pred_dir.to_path_buf(),
            target: target_dir.to_path_buf(),
            n_pred: unpaired.len(),
            n_target: targets.len(),
        });
    }
    Ok((pairs, unpaired))
}
