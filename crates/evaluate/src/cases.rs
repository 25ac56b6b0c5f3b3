//! Finding the cases of a prediction, target or NCCT folder and pairing them by name.
//!
//! A folder holds one volume per case: `CASE.nii.gz` / `CASE.nii`, or a sub-folder `CASE/`
//! holding a DICOM series (what `predict --format dicom` writes), read with the listing every
//! command shares ([`dataset::cases`]). Other files (logs, the evaluation's own CSV and JSON,
//! which by default land in the prediction folder) are ignored, and so are hidden entries. Two
//! entries naming the same case are an error: guessing which one the user meant would score
//! the wrong volume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tracing::debug;

use super::EvalError;

/// Case name -> volume path (NIfTI file or DICOM folder), sorted by name.
pub type CaseFiles = BTreeMap<String, PathBuf>;

/// Lists the volumes of `dir` by case name ([`dataset::cases`], the listing `prepare` and
/// `predict` read too). Entries that name no case are ignored (logged at debug level); two
/// entries naming one case are an error.
pub fn list_cases(dir: &Path) -> Result<CaseFiles, EvalError> {
    if !dir.is_dir() {
        return Err(EvalError::NotAFolder(dir.to_path_buf()));
    }
    let listing = dataset::cases::list_cases(dir, true).map_err(|e| EvalError::Io {
        path: e.path,
        source: e.source,
    })?;
    for s in &listing.skipped {
        debug!(dir = %dir.display(), "ignoring {s}");
    }
    let mut cases = CaseFiles::new();
    for (case, sources) in listing.cases {
        match sources.as_slice() {
            [one] => {
                cases.insert(case, one.path.clone());
            }
            [first, second, ..] => {
                return Err(EvalError::Ambiguous {
                    case,
                    first: first.path.clone(),
                    second: second.path.clone(),
                })
            }
            [] => {}
        }
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
