//! Evaluation (no deep-learning dependency): scores predicted CTPA volumes against target CTPA volumes in HU, inside body,
//! lung and vessel masks, beside the NCCT-as-prediction baseline that the literature reports.
//!
//! The flow of [`evaluate`]:
//! 1. pair the prediction, target and NCCT folders by case name ([`cases`]);
//! 2. per case, read the volumes ([`volume::io::read_ct`]: NIfTI or DICOM folder, scanner padding read as air) and
//!    check that prediction, NCCT and masks lie on the target's grid (scoring volumes that are
//!    not voxel-aligned would measure the misalignment, so this is an error naming both files);
//! 3. build the region masks ([`regions`]: given folders, or computed from the target);
//! 4. score model and baseline with [`metrics::score_regions`] (the HU window, clipping and
//!    SSIM conventions are documented in [`metrics::score`]);
//! 5. summarize (mean, sd, median per region and metric) and write the per-case CSV and the
//!    summary JSON atomically ([`Evaluation::write`], [`report`]).
//!
//! Cases are scored one after the other: each is parallel inside (the metrics run over slices
//! with rayon), and holding several 512x512x300 cases at once would only cost memory.

pub mod cases;
pub mod montage;
pub mod regions;
pub mod report;

use metrics::{MetricsError, ScoreConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tracing::{debug, info, warn};
use util::atomic::write_atomic;
use volume::{Volume, VolumeError};

pub use cases::CasePaths;
pub use regions::{MaskSources, Region, VesselRule};
pub use report::{CaseResult, RegionResult, SummaryRow};

/// File names written into the output folder.
pub const CSV_NAME: &str = "evaluation.csv";
pub const JSON_NAME: &str = "evaluation.json";
/// Format tag and version of the summary JSON.
pub const JSON_FORMAT: &str = "ncct2ctpa-evaluation";
pub const JSON_VERSION: u32 = 1;

/// Why an evaluation could not run. Every variant names the file(s) or folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a folder")]
    NotAFolder(PathBuf),
    #[error("case {case}: both {first} and {second} name it; keep one")]
    Ambiguous {
        case: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("case {case}: no {what} in {dir}")]
    MissingFile {
        case: String,
        what: String,
        dir: PathBuf,
    },
    #[error(
        "no case to score: none of the {n_pred} predictions in {pred} has a target of the same \
         name among the {n_target} volumes in {target} (cases pair by file name: \
         CASE.nii.gz or a DICOM folder CASE/)"
    )]
    NoPairs {
        pred: PathBuf,
        target: PathBuf,
        n_pred: usize,
        n_target: usize,
    },
    #[error("case {case}: {other} is not on the grid of the target {target}: {detail}")]
    GridMismatch {
        case: String,
        target: PathBuf,
        other: PathBuf,
        detail: String,
    },
    /// Reading a volume or computing a mask failed (the error names the file).
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("case {case}: scoring {what} failed")]
    Metrics {
        case: String,
        what: String,
        #[source]
        source: MetricsError,
    },
    #[error("invalid evaluation settings: {0}")]
    Config(String),
    /// Writing an output (a montage) failed; the error names the file.
    #[error(transparent)]
    Write(#[from] util::atomic::WriteError),
}

/// What to evaluate and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateConfig {
    /// Predicted CTPA volumes, one per case.
    pub pred_dir: PathBuf,
    /// Target (real) CTPA volumes.
    pub target_dir: PathBuf,
    /// NCCT volumes, scored as if they were predictions: the baseline.
    pub ncct_dir: Option<PathBuf>,
    /// Regions to score in, in report order.
    pub regions: Vec<Region>,
    /// Where masks come from.
    pub masks: MaskSources,
    /// HU window, SSIM settings.
    pub score: ScoreConfig,
    /// Largest difference of spacing/origin (mm) and direction still counted as the same grid.
    pub grid_tolerance: f64,
    /// Write a montage per case with an NCCT here ([`montage`]).
    #[serde(default)]
    pub montage_dir: Option<PathBuf>,
}

impl EvaluateConfig {
    /// Default regions, masks and scoring for the given folders.
    pub fn new(pred_dir: PathBuf, target_dir: PathBuf) -> Self {
        Self {
            pred_dir,
            target_dir,
            ncct_dir: None,
            regions: Region::defaults(),
            masks: MaskSources::default(),
            score: ScoreConfig::default(),
            grid_tolerance: 1e-3,
            montage_dir: None,
        }
    }

    fn validate(&self) -> Result<(), EvalError> {
        self.score
            .window
            .validate()
            .map_err(|e| EvalError::Config(e.to_string()))?;
        if self.regions.is_empty() {
            return Err(EvalError::Config("no region to score".into()));
        }
        for (i, r) in self.regions.iter().enumerate() {
            if self.regions[..i].iter().any(|q| q.name() == r.name()) {
                return Err(EvalError::Config(format!(
                    "two regions are named {:?}; rename one mask folder",
                    r.name()
                )));
            }
        }
        let v = &self.masks.vessel;
        if !v.threshold_hu.is_finite()
            || !v.lung_dilation_mm.is_finite()
            || v.lung_dilation_mm < 0.0
        {
            return Err(EvalError::Config(format!(
                "vessel rule needs a finite threshold and a dilation >= 0 mm, got {v:?}"
            )));
        }
        Ok(())
    }
}

/// A region and how its masks were obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionInfo {
    pub name: String,
    pub masks: String,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub config: EvaluateConfig,
    pub regions: Vec<RegionInfo>,
    pub cases: Vec<CaseResult>,
    /// Predictions without a target of the same name (not scored).
    pub unpaired: Vec<String>,
}

/// Progress of an evaluation, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Cases finished so far.
    pub done: usize,
    pub total: usize,
    /// The case about to be scored (`None` once all are done).
    pub case: Option<&'a str>,
}

/// Scores every paired case (see the module docs).
pub fn evaluate(cfg: &EvaluateConfig) -> Result<Evaluation, EvalError> {
    evaluate_with_progress(cfg, &mut |_| {})
}

/// [`evaluate`], reporting progress before each case and at the end.
pub fn evaluate_with_progress(
    cfg: &EvaluateConfig,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Evaluation, EvalError> {
    cfg.validate()?;
    if let Some(dir) = &cfg.montage_dir {
        std::fs::create_dir_all(dir).map_err(|source| EvalError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let (pairs, unpaired) = cases::pair(&cfg.pred_dir, &cfg.target_dir, cfg.ncct_dir.as_deref())?;
    if !unpaired.is_empty() {
        warn!(
            n = unpaired.len(),
            first = %unpaired[0],
            "predictions without a target of the same name are not scored"
        );
    }
    info!(
        cases = pairs.len(),
        baseline = cfg.ncct_dir.is_some(),
        "evaluating"
    );
    let total = pairs.len();
    let mut results = Vec::with_capacity(total);
    for (done, paths) in pairs.iter().enumerate() {
        progress(Progress {
            done,
            total,
            case: Some(&paths.case),
        });
        results.push(evaluate_case(cfg, paths)?);
    }
    progress(Progress {
        done: total,
        total,
        case: None,
    });
    Ok(Evaluation {
        regions: cfg
            .regions
            .iter()
            .map(|r| RegionInfo {
                name: r.name().to_owned(),
                masks: cfg.masks.describe(r),
            })
            .collect(),
        config: cfg.clone(),
        cases: results,
        unpaired,
    })
}

/// Errors unless `other` lies on `target`'s voxel grid (within `tol`), naming both files.
pub(crate) fn check_grid<T, U>(
    case: &str,
    target: &Volume<T>,
    target_path: &Path,
    other: &Volume<U>,
    other_path: &Path,
    tol: f64,
) -> Result<(), EvalError> {
    if target.same_grid(other, tol) {
        return Ok(());
    }
    let detail = if target.data.dim() != other.data.dim() {
        format!(
            "size (x, y, z) {:?} vs {:?}",
            other.size_xyz(),
            target.size_xyz()
        )
    } else {
        let (a, b) = (&other.geometry, &target.geometry);
        format!(
            "spacing {:?} vs {:?}, origin {:?} vs {:?}, direction {:?} vs {:?} (tolerance {tol})",
            a.spacing, b.spacing, a.origin, b.origin, a.direction, b.direction
        )
    };
    Err(EvalError::GridMismatch {
        case: case.to_owned(),
        target: target_path.to_path_buf(),
        other: other_path.to_path_buf(),
        detail,
    })
}

fn evaluate_case(cfg: &EvaluateConfig, p: &CasePaths) -> Result<CaseResult, EvalError> {
    let t0 = Instant::now();
    let target = volume::io::read_ct(&p.target, None)?;
    let pred = volume::io::read_ct(&p.pred, None)?;
    check_grid(
        &p.case,
        &target,
        &p.target,
        &pred,
        &p.pred,
        cfg.grid_tolerance,
    )?;
    let ncct = match &p.ncct {
        Some(path) => {
            let v = volume::io::read_ct(path, None)?;
            check_grid(&p.case, &target, &p.target, &v, path, cfg.grid_tolerance)?;
            Some(v)
        }
        None => None,
    };
    debug!(case = %p.case, shape = ?target.shape_zyx(), read_s = t0.elapsed().as_secs_f64(), "read");

    let mut builder =
        regions::CaseMasks::new(&p.case, &target, &p.target, &cfg.masks, cfg.grid_tolerance);
    let masks = cfg
        .regions
        .iter()
        .map(|r| builder.get(r))
        .collect::<Result<Vec<_>, _>>()?;
    drop(builder);
    let views: Vec<_> = masks.iter().map(|m| m.data.view()).collect();

    let score = |what: &str, v: &Volume| {
        metrics::score_regions(v.data.view(), target.data.view(), &views, &cfg.score).map_err(
            |source| EvalError::Metrics {
                case: p.case.clone(),
                what: format!("{what} ({})", p.pred.display()),
                source,
            },
        )
    };
    if let (Some(dir), Some(n)) = (&cfg.montage_dir, &ncct) {
        let path = dir.join(format!("{}.png", p.case));
        let z = montage::write_montage(&path, n, &pred, &target)?;
        debug!(case = %p.case, slice = z, path = %path.display(), "montage");
    }
    let model = score("the prediction", &pred)?;
    let baseline = match &ncct {
        Some(n) => Some(score("the NCCT baseline", n)?),
        None => None,
    };
    let regions: Vec<RegionResult> = cfg
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if model[i].voxels == 0 {
                warn!(case = %p.case, region = r.name(), "the region is empty in this case; its scores are left blank");
            }
            RegionResult {
                region: r.name().to_owned(),
                model: model[i],
                baseline: baseline.as_ref().map(|b| b[i]),
            }
        })
        .collect();
    info!(
        case = %p.case,
        seconds = t0.elapsed().as_secs_f64(),
        body_mae = ?regions.first().and_then(|r| r.model.mae),
        "scored"
    );
    Ok(CaseResult {
        case: p.case.clone(),
        pred: p.pred.clone(),
        target: p.target.clone(),
        ncct: p.ncct.clone(),
        regions,
    })
}

/// The summary file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryFile {
    pub format: String,
    pub version: u32,
    pub config: EvaluateConfig,
    pub regions: Vec<RegionInfo>,
    pub cases: Vec<String>,
    pub unpaired: Vec<String>,
    pub summary: Vec<SummaryRow>,
}

impl Evaluation {
    /// Names of the scored regions, in order.
    pub fn region_names(&self) -> Vec<String> {
        self.regions.iter().map(|r| r.name.clone()).collect()
    }

    /// Mean, sd, median per region and metric, model and baseline.
    pub fn summary(&self) -> Vec<SummaryRow> {
        report::summarize(
            &self.cases,
            &self.region_names(),
            self.config.ncct_dir.is_some(),
        )
    }

    /// The summary as a text table.
    pub fn table(&self) -> String {
        report::table(&self.summary())
    }

    /// The content of `evaluation.json`.
    pub fn summary_file(&self) -> SummaryFile {
        SummaryFile {
            format: JSON_FORMAT.into(),
            version: JSON_VERSION,
            config: self.config.clone(),
            regions: self.regions.clone(),
            cases: self.cases.iter().map(|c| c.case.clone()).collect(),
            unpaired: self.unpaired.clone(),
            summary: self.summary(),
        }
    }

    /// Writes `evaluation.csv` (per case) and `evaluation.json` (summary) into `out_dir`
    /// (created if needed), each atomically; returns their paths.
    pub fn write(&self, out_dir: &Path) -> Result<(PathBuf, PathBuf), EvalError> {
        std::fs::create_dir_all(out_dir).map_err(|source| EvalError::Io {
            path: out_dir.to_path_buf(),
            source,
        })?;
        let csv = out_dir.join(CSV_NAME);
        write_atomic(&csv, |w| report::write_csv(&self.cases, w)).map_err(VolumeError::from)?;
        let json = out_dir.join(JSON_NAME);
        let file = self.summary_file();
        write_atomic(&json, |w| {
            serde_json::to_writer_pretty(&mut *w, &file)?;
            writeln!(w)
        })
        .map_err(VolumeError::from)?;
        info!(csv = %csv.display(), json = %json.display(), "wrote evaluation");
        Ok((csv, json))
    }
}
