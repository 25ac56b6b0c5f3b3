//! `ncct2ctpa evaluate --model RUN --data PREPARED [--split test] [--checkpoint best]`: one
//! command from a trained run to its scores. Every case of the split is translated with the
//! run's checkpoint (`infer`) and written, beside the prepared NCCT and CTPA on the same grid,
//! into the output folder (`pred/`, `ncct/`, `target/`: NIfTI to open in a viewer); then the
//! torch-free `evaluate` crate scores them exactly as `evaluate --pred --target --ncct` does,
//! so the numbers are those of `predict` followed by `evaluate` (asserted in
//! `crates/cli/tests/cli_evaluate_model.rs`).

use anyhow::{bail, Context, Result};
use dataset::manifest::Split;
use dataset::store::PreparedDataset;
use infer::predict::PredictOptions;
use std::path::{Path, PathBuf};
use volume::io::nifti;

/// Which of a run's checkpoints to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckpointChoice {
    Best,
    Final,
    Latest,
}

impl CheckpointChoice {
    fn name(self) -> &'static str {
        match self {
            Self::Best => "best",
            Self::Final => "final",
            Self::Latest => "latest",
        }
    }
}

/// What `--model` mode needs besides the scoring settings.
#[derive(Debug)]
pub struct ModelRun<'a> {
    pub model: &'a Path,
    pub data: &'a Path,
    pub split: Split,
    pub checkpoint: CheckpointChoice,
    pub device: &'a str,
    pub batch_size: usize,
    /// Tiles (`--tile`); `None`: what the run's validation ran ([`infer::tiles::resolve`]).
    pub tile: Option<infer::tiles::TileSize>,
    /// The tiles' step (`--tile-step`); `None`: the run's.
    pub tile_step: Option<f64>,
    /// Test-time augmentation (`--tta`); `None`: what the run's validation ran
    /// ([`infer::tta::resolve`]).
    pub tta: Option<infer::tta::TtaMode>,
}

/// The folders `predict_split` filled.
#[derive(Debug)]
pub struct Folders {
    pub pred: PathBuf,
    pub target: PathBuf,
    pub ncct: PathBuf,
}

/// The checkpoint folder of `model`: `RUN/checkpoints/NAME`, or `model` itself when it is a
/// checkpoint folder.
fn checkpoint_dir(model: &Path, choice: CheckpointChoice) -> Result<PathBuf> {
    let named = model.join("checkpoints").join(choice.name());
    if named.join(infer::checkpoint::STATE_FILE).is_file() {
        return Ok(named);
    }
    if model.join(infer::checkpoint::STATE_FILE).is_file() {
        return Ok(model.to_path_buf());
    }
    let have: Vec<String> = std::fs::read_dir(model.join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join(infer::checkpoint::STATE_FILE).is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    bail!(
        "{}: no checkpoints/{} (the run has {}); pass --checkpoint best|final|latest or a \
         checkpoint folder",
        model.display(),
        choice.name(),
        if have.is_empty() {
            "none".to_owned()
        } else {
            have.join(", ")
        }
    )
}

/// The default output folder: `RUN/evaluation/SPLIT-CHECKPOINT`, with `-tile-PX` (`-auto`,
/// `-whole`) appended when `--tile` is given, `-step-F` when `--tile-step` is and `-tta-MODE`
/// when `--tta` is, so the run's own scores and those of other settings sit side by side.
pub fn default_out(run: &ModelRun<'_>) -> PathBuf {
    let mut tiles = run.tile.map_or(String::new(), |t| format!("-tile-{t}"));
    if let Some(step) = run.tile_step {
        tiles.push_str(&format!("-step-{step}"));
    }
    let tta = run.tta.map_or(String::new(), |t| format!("-tta-{t}"));
    run.model
        .join("evaluation")
        .join(format!("{}-{}{tiles}{tta}", run.split, run.checkpoint.name()).replace(' ', ""))
}

/// Translates every case of the split into `out/pred/`, and writes its prepared NCCT and CTPA
/// into `out/ncct/` and `out/target/`.
pub fn predict_split(run: &ModelRun<'_>, out: &Path) -> Result<Folders> {
    let ds = PreparedDataset::open(run.data)
        .with_context(|| format!("opening the prepared dataset {}", run.data.display()))?;
    let names: Vec<String> = ds
        .cases(run.split)
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    if names.is_empty() {
        let counts: Vec<String> = Split::ALL
            .iter()
            .map(|s| format!("{} {}", ds.cases(*s).len(), s.to_string().trim()))
            .collect();
        bail!(
            "{}: the {} split has no case ({}); choose another with --split",
            run.data.display(),
            run.split.to_string().trim(),
            counts.join(", ")
        );
    }
    let ckpt = checkpoint_dir(run.model, run.checkpoint)?;
    let device = model::device::select(run.device)?;
    let loaded = infer::checkpoint::load_generator(&ckpt, device)
        .with_context(|| format!("loading the model from {}", ckpt.display()))?;
    let provenance = infer::provenance::Provenance::of(&loaded);
    let translator = loaded.translator();
    // fp32 inference, on the tiles and views validation ran unless others are asked for
    let models = std::slice::from_ref(&loaded);
    let opts = PredictOptions {
        batch_size: run.batch_size,
        tiles: infer::tiles::resolve(run.tile, run.tile_step, models)?,
        tta: infer::tta::resolve(run.tta, models)?,
        ..PredictOptions::default()
    };
    let folders = Folders {
        pred: out.join("pred"),
        target: out.join("target"),
        ncct: out.join("ncct"),
    };
    for dir in [&folders.pred, &folders.target, &folders.ncct] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tracing::info!(
        cases = names.len(), split = %run.split, checkpoint = %ckpt.display(), step = loaded.step,
        "evaluating a model"
    );
    for (i, name) in names.iter().enumerate() {
        let case = ds
            .volume(name)
            .with_context(|| format!("reading case {name} of {}", run.data.display()))?;
        errln!(
            "[{}/{}] {name}: translating {} slices",
            i + 1,
            names.len(),
            case.ncct.shape_zyx()[0]
        );
        let pred = model::guard::catch_torch(&format!("translating case {name}"), || {
            translator.translate_volume(&case.ncct, &opts, |_| {})
        })?;
        let file = format!("{name}.nii.gz");
        nifti::write_nifti_described(
            &folders.pred.join(&file),
            &pred,
            &provenance.nifti_descrip(),
        )?;
        nifti::write_nifti(&folders.target.join(&file), &case.ctpa)?;
        nifti::write_nifti(&folders.ncct.join(&file), &case.ncct)?;
    }
    Ok(folders)
}
