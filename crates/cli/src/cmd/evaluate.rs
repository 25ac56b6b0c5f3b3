//! `ncct2ctpa evaluate`: score predicted CTPA volumes against targets in HU (MAE, PSNR, SSIM)
//! inside body, lung and vessel masks, beside the NCCT-as-prediction baseline
//! (see the `evaluate` crate). Prints the summary table; writes `evaluation.csv` (per case) and
//! `evaluation.json` (summary). Exits non-zero on zero pairs, mismatched grids or unreadable
//! files. With `--model RUN --data PREPARED` it first predicts a split of a prepared dataset
//! ([`super::evaluate_model`]) and writes a montage per case.

use super::evaluate_model::{self, CheckpointChoice, ModelRun};
use anyhow::Context;
use dataset::manifest::Split;
use evaluate::{evaluate_with_progress, EvaluateConfig, Region};
use indicatif::{ProgressBar, ProgressStyle};
use metrics::{ScoreWindow, SsimMode};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Predicted CTPA volumes: CASE.nii.gz (or CASE/ DICOM folders).
    #[arg(long, value_name = "DIR", required_unless_present = "model")]
    pred: Option<PathBuf>,
    /// Target CTPA volumes, paired with the predictions by case name.
    #[arg(long, value_name = "DIR", required_unless_present = "model")]
    target: Option<PathBuf>,
    /// A trained run (or checkpoint folder) to evaluate on a split of --data: predicts every
    /// case, then scores it against the prepared CTPA with the NCCT baseline, and writes a
    /// montage per case (NCCT | synthetic | CTPA | |error|).
    #[arg(long, value_name = "RUN", requires = "data", conflicts_with_all = ["pred", "target", "ncct"])]
    model: Option<PathBuf>,
    /// With --model: the prepared dataset (from `ncct2ctpa prepare`).
    #[arg(long, value_name = "PREPARED_DIR", requires = "model")]
    data: Option<PathBuf>,
    /// With --model: the split to evaluate.
    #[arg(long, value_enum, default_value_t = SplitArg::Test, requires = "model")]
    split: SplitArg,
    /// With --model: which checkpoint of the run.
    #[arg(long, value_enum, default_value_t = CheckpointChoice::Best, requires = "model")]
    checkpoint: CheckpointChoice,
    /// With --model: device of the predictions (auto, cpu, cuda, cuda:N).
    #[arg(long, default_value = "auto", requires = "model")]
    device: String,
    /// With --model: slices per forward pass.
    #[arg(long, default_value_t = 8, requires = "model")]
    batch_size: usize,
    /// With --model: tiles as `predict --tile` (PX, auto: the training crop, or whole);
    /// default: what the run's validation ran.
    #[arg(long, value_name = "PX|auto|whole", requires = "model")]
    tile: Option<infer::tiles::TileSize>,
    /// With --model: the largest distance between neighbouring tiles, as a fraction of the
    /// tile; default: the run's.
    #[arg(long, value_name = "FRACTION", requires = "model")]
    tile_step: Option<f64>,
    /// With --model: test-time augmentation as `predict --tta` (none, auto: the mirrors
    /// training used, flip, full; a bare --tta is flip); default: what the run's validation
    /// ran.
    #[arg(long, value_name = "none|auto|flip|full", num_args = 0..=1,
          default_missing_value = "flip", requires = "model")]
    tta: Option<infer::tta::TtaMode>,
    /// Write a montage per case (NCCT | prediction | target | |error|) into OUT/montage/
    /// (needs --ncct; always on with --model).
    #[arg(long)]
    montage: bool,
    /// NCCT volumes: scored as if they were predictions, the baseline every paper reports.
    #[arg(long, value_name = "DIR")]
    ncct: Option<PathBuf>,
    /// Region to score in: body, lung, vessel, or a folder of masks (DIR/CASE.nii.gz, reported
    /// under the folder's name). Repeat for several; default: body, lung and vessel.
    #[arg(long = "mask", value_name = "body|lung|vessel|DIR")]
    masks: Vec<String>,
    /// Body masks to use instead of computing them from the target.
    #[arg(long, value_name = "DIR")]
    body: Option<PathBuf>,
    /// Lung masks to use instead of computing them from the target.
    #[arg(long, value_name = "DIR")]
    lung: Option<PathBuf>,
    /// Vessel masks (e.g. a phantom's truth/vessels) to use instead of deriving them from the
    /// target (target > --vessel-threshold inside the lung mask, dilated by --vessel-dilation).
    #[arg(long, value_name = "DIR")]
    vessels: Option<PathBuf>,
    /// Target HU above which a voxel near the lungs is an enhanced vessel.
    #[arg(
        long,
        value_name = "HU",
        default_value_t = 150.0,
        allow_hyphen_values = true
    )]
    vessel_threshold: f32,
    /// Dilation of the lung mask (mm) before the vessel threshold, to take in hilar vessels;
    /// it takes in rib and spine cortex too, so it is off by default.
    #[arg(long, value_name = "MM", default_value_t = 0.0)]
    vessel_dilation: f64,
    /// HU window LO,HI both volumes are clipped to; its width is the PSNR/SSIM data range.
    /// SynthRAD 2023 uses -1024,3000.
    #[arg(long, value_name = "LO,HI", default_value = "-1024,3071",
          value_parser = parse_window, allow_hyphen_values = true)]
    window: ScoreWindow,
    /// SSIM window: 2D per axial slice (the default, as validation during training computes
    /// it: see metrics::SsimMode) or a 3D Gaussian over the volume (SynthRAD's definition;
    /// needs 11+ slices).
    #[arg(long, value_enum, default_value_t = SsimArg::Axial)]
    ssim: SsimArg,
    /// Where evaluation.csv and evaluation.json go (default: the --pred folder, as nnU-Net
    /// does; with --model: RUN/evaluation/SPLIT-CHECKPOINT).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Train,
    Val,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Val => Split::Val,
            SplitArg::Test => Split::Test,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SsimArg {
    Volume,
    Axial,
}

fn parse_window(s: &str) -> Result<ScoreWindow, String> {
    let (lo, hi) = s
        .split_once(',')
        .ok_or_else(|| format!("expected LO,HI (two numbers), got {s:?}"))?;
    let num = |p: &str| {
        p.trim()
            .parse::<f32>()
            .map_err(|e| format!("{p:?} in {s:?} is not a number: {e}"))
    };
    ScoreWindow::new(num(lo)?, num(hi)?).map_err(|e| e.to_string())
}

/// `--mask` values to regions; a value that is not a region name must be an existing folder.
fn regions(values: &[String]) -> anyhow::Result<Vec<Region>> {
    if values.is_empty() {
        return Ok(Region::defaults());
    }
    values
        .iter()
        .map(|v| match v.as_str() {
            "body" => Ok(Region::Body),
            "lung" => Ok(Region::Lung),
            "vessel" | "vessels" => Ok(Region::Vessel),
            dir => {
                let path = PathBuf::from(dir);
                anyhow::ensure!(
                    path.is_dir(),
                    "--mask {dir}: not body, lung, vessel or an existing folder of masks"
                );
                Ok(Region::custom(&path))
            }
        })
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (pred, target, ncct, out, montage) = match (&args.model, &args.data) {
        (Some(model), Some(data)) => {
            let run = ModelRun {
                model,
                data,
                split: args.split.into(),
                checkpoint: args.checkpoint,
                device: &args.device,
                batch_size: args.batch_size,
                tile: args.tile,
                tile_step: args.tile_step,
                tta: args.tta,
            };
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| evaluate_model::default_out(&run));
            let f = evaluate_model::predict_split(&run, &out)?;
            (
                f.pred,
                f.target,
                Some(f.ncct),
                out.clone(),
                Some(out.join("montage")),
            )
        }
        _ => {
            let (Some(pred), Some(target)) = (args.pred.clone(), args.target.clone()) else {
                anyhow::bail!("give --pred and --target, or --model and --data");
            };
            if args.montage && args.ncct.is_none() {
                anyhow::bail!("--montage needs --ncct (the montage shows the NCCT beside)");
            }
            let out = args.out.clone().unwrap_or_else(|| pred.clone());
            let montage = args.montage.then(|| out.join("montage"));
            (pred, target, args.ncct.clone(), out, montage)
        }
    };
    let mut cfg = EvaluateConfig::new(pred.clone(), target.clone());
    cfg.ncct_dir = ncct;
    cfg.montage_dir = montage;
    cfg.regions = regions(&args.masks)?;
    cfg.masks.body_dir = args.body;
    cfg.masks.lung_dir = args.lung;
    cfg.masks.vessel_dir = args.vessels;
    cfg.masks.vessel.threshold_hu = args.vessel_threshold;
    cfg.masks.vessel.lung_dilation_mm = args.vessel_dilation;
    cfg.score.window = args.window;
    cfg.score.ssim_mode = match args.ssim {
        SsimArg::Volume => SsimMode::Volume,
        SsimArg::Axial => SsimMode::Axial,
    };

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} scoring [{bar:30}] {pos}/{len} {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let eval = evaluate_with_progress(&cfg, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(p.case.unwrap_or("").to_owned());
    })
    .with_context(|| format!("evaluating {} against {}", pred.display(), target.display()))?;
    bar.finish_and_clear();

    if !eval.unpaired.is_empty() {
        errln!(
            "note: {} prediction(s) without a target of the same name were not scored: {}",
            eval.unpaired.len(),
            eval.unpaired.join(", ")
        );
    }
    let (csv, json) = eval.write(&out)?;
    outln!(
        "{} case(s); SSIM {:?}, HU window [{}, {}]",
        eval.cases.len(),
        cfg.score.ssim_mode,
        cfg.score.window.lo,
        cfg.score.window.hi
    );
    for r in &eval.regions {
        outln!("  {}: {}", r.name, r.masks);
    }
    out!("{}", eval.table());
    outln!("per case: {}\nsummary:  {}", csv.display(), json.display());
    if let Some(dir) = &cfg.montage_dir {
        outln!("montages: {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
