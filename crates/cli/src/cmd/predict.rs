//! `ncct2ctpa predict`: NCCT volume(s) in, synthetic CTPA volume(s) in HU out, each with
//! exactly its input's geometry.
//!
//! The model is rebuilt from the configuration stored with the checkpoint
//! (`infer::checkpoint::load_generator`): a run folder or a checkpoint folder is all it needs.
//! Several `--model`s make an ensemble: the output is the mean of their predictions
//! (`infer::predict::Translator::translate_mean`), and its provenance names every member.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use infer::predict::PredictOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use volume::io::{dicom, nifti, nifti_stem};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// NIfTI-1 (`.nii.gz` unless OUTPUT names `.nii`).
    Nifti,
    /// A DICOM series folder (uncompressed CT), patient and study carried from the input when
    /// it is DICOM.
    Dicom,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run folder (its best, else final, else latest checkpoint) or a checkpoint folder.
    /// Repeat it to predict with an ensemble: the mean of the models' predictions (several
    /// seeds or folds, as nnU-Net averages its five; costs one pass per model).
    #[arg(long, value_name = "RUN_DIR_OR_CHECKPOINT", required = true)]
    model: Vec<PathBuf>,
    /// An NCCT volume (.nii/.nii.gz or a DICOM series folder), or a folder of them.
    #[arg(long, value_name = "PATH")]
    input: PathBuf,
    /// Output file (one input, NIfTI), output series folder (one input, DICOM) or output folder
    /// (a folder of inputs: one output per case, named after it).
    #[arg(long, value_name = "PATH")]
    output: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Nifti)]
    format: Format,
    /// Device: auto (cuda when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Slices per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// In-plane spacing X,Y (mm) the model was trained at; inputs at another spacing are
    /// resampled to it and the prediction back. Default: use inputs at their own spacing.
    #[arg(long, value_name = "X,Y", value_parser = parse_xy)]
    model_spacing: Option<[f64; 2]>,
    /// DICOM input: the SeriesInstanceUID to use when the folder holds several series.
    #[arg(long, value_name = "UID")]
    series: Option<String>,
    /// Test-time augmentation, each view mapped back and averaged: `flip` (a bare --tta) is
    /// the slice and its left-right mirror (2 passes); `auto` mirrors along the axes training
    /// mirrored, as nnU-Net does; `full` adds rotations by -5 and +5 degrees to the mirror (4
    /// passes), which resample and blur (README); `none` is one pass. Default: what the run's
    /// validation ran (its `[inference] tta`; none for checkpoints that do not record it).
    #[arg(long, value_name = "none|auto|flip|full", num_args = 0..=1, default_missing_value = "flip")]
    tta: Option<infer::tta::TtaMode>,
    /// Precision of G's forward passes: fp32, bf16 (autocast; CPU or CUDA) or f16 (autocast;
    /// CUDA only). See the README for the HU error bf16 costs.
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    precision: infer::predict::Precision,
    /// Sliding-window inference, as nnU-Net predicts: G runs on overlapping square tiles of
    /// PX pixels (a multiple of 2^depth), blended with a Gaussian that trusts each tile's
    /// centre; `auto` takes the crop the model was trained on, so G sees at inference the
    /// field of view it saw in training; `whole` runs G on whole slices. Default: what the
    /// run's validation ran (its `[inference]`; whole slices for checkpoints that do not
    /// record it).
    #[arg(long, value_name = "PX|auto|whole")]
    tile: Option<infer::tiles::TileSize>,
    /// The largest distance between neighbouring tiles, as a fraction of the tile (nnU-Net's
    /// 0.5: every pixel in about two tiles per axis). Default: the run's `[inference]`.
    #[arg(long, value_name = "FRACTION")]
    tile_step: Option<f64>,
    /// Replace outputs that already exist.
    #[arg(long)]
    force: bool,
    /// DICOM output: file the synthetic series into a new study (by default it joins the
    /// input's study, beside the NCCT it was computed from).
    #[arg(long)]
    new_study: bool,
}

/// One volume to translate and where its result goes.
#[derive(Debug)]
struct Job {
    case: String,
    input: PathBuf,
    output: PathBuf,
    /// The input is a DICOM series folder (its headers serve as the reference when writing
    /// DICOM).
    dicom_input: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let jobs = plan(&args)?;
    for job in &jobs {
        if job.output.exists() && !args.force {
            bail!(
                "{} already exists; pass --force to replace it (nothing was written)",
                job.output.display()
            );
        }
    }
    let device = model::device::select(&args.device)?;
    let mut loaded = Vec::with_capacity(args.model.len());
    for path in &args.model {
        let m = infer::checkpoint::load_generator(path, device)
            .with_context(|| format!("loading the model from {}", path.display()))?;
        tracing::info!(
            checkpoint = %m.checkpoint.display(), step = m.step, ema = m.ema,
            window = ?m.window, "loaded"
        );
        loaded.push(m);
    }
    tracing::info!(
        models = loaded.len(),
        cases = jobs.len(),
        "predicting{}",
        if loaded.len() > 1 {
            " (the mean of the models' predictions)"
        } else {
            ""
        }
    );
    let translators: Vec<_> = loaded.iter().map(|m| m.translator()).collect();
    // the output says it is synthetic and which model(s) made it (infer::provenance)
    let provenance = infer::provenance::Provenance::of_all(&loaded);
    let opts = PredictOptions {
        batch_size: args.batch_size,
        model_spacing_xy: args.model_spacing,
        tta: infer::tta::resolve(args.tta, &loaded)?,
        precision: args.precision,
        tiles: infer::tiles::resolve(args.tile, args.tile_step, &loaded)?,
    };
    infer::predict::check_precision(opts.precision, device)?;

    for job in &jobs {
        let ncct = volume::io::read_ct(&job.input, args.series.as_deref())?;
        let nz = ncct.shape_zyx()[0];
        let bar = ProgressBar::new((nz * translators.len()) as u64).with_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {pos}/{len} slices ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(job.case.clone());
        let start = std::time::Instant::now();
        let out =
            model::guard::catch_torch(&format!("translating {}", job.input.display()), || {
                infer::predict::Translator::translate_mean(&translators, &ncct, &opts, |n| {
                    bar.inc(n as u64)
                })
            })
            .with_context(|| format!("translating {}", job.input.display()))?;
        bar.finish_and_clear();
        match args.format {
            Format::Nifti => {
                nifti::write_nifti_described(&job.output, &out, &provenance.nifti_descrip())?
            }
            Format::Dicom => {
                let reference = job.dicom_input.then_some(job.input.as_path());
                let source = match job.dicom_input {
                    true => format!("DICOM series in {}", job.input.display()),
                    false => format!("file {}", job.input.display()),
                };
                let info = provenance.series_info(&source, args.new_study);
                dicom::write_series(&job.output, &out, reference, &info)?
            }
        }
        tracing::info!(
            case = %job.case, slices = nz, seconds = start.elapsed().as_secs_f64(),
            output = %job.output.display(), "wrote synthetic CTPA"
        );
        outln!("{} -> {}", job.input.display(), job.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Works out the inputs and the output path of each.
fn plan(args: &Args) -> Result<Vec<Job>> {
    let input = &args.input;
    if !input.exists() {
        bail!("{}: no such file or folder", input.display());
    }
    if overlaps(&args.output, input) {
        bail!(
            "{}: the output would overwrite the input {} (the output may never be the input or \
             lie inside it; --force only replaces earlier outputs); nothing was written",
            args.output.display(),
            input.display()
        );
    }
    if input.is_file() || is_dicom_series(input) {
        let dicom_input = input.is_dir();
        let case = case_name(input).unwrap_or_else(|| "input".into());
        return Ok(vec![Job {
            case,
            input: input.clone(),
            output: args.output.clone(),
            dicom_input,
        }]);
    }
    // A folder of inputs: NIfTI files and DICOM series sub-folders, listed as every command
    // lists a folder of cases (dataset::cases).
    let listing = dataset::cases::list_cases(input, true)?;
    for skipped in &listing.skipped {
        tracing::info!("skipped: {skipped}");
    }
    let mut jobs = Vec::new();
    for case in listing.cases.keys() {
        let Some(source) = listing
            .single(case)
            .map_err(|e| anyhow::anyhow!("{}: case {case}: {e}", input.display()))?
        else {
            continue;
        };
        let output = match args.format {
            Format::Nifti => args.output.join(format!("{case}.nii.gz")),
            Format::Dicom => args.output.join(case),
        };
        jobs.push(Job {
            case: case.clone(),
            input: source.path.clone(),
            output,
            dicom_input: source.kind == dataset::cases::SourceKind::DicomDir,
        });
    }
    if jobs.is_empty() {
        bail!(
            "{}: no NIfTI file (.nii, .nii.gz) or DICOM series folder to predict from",
            input.display()
        );
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating the output folder {}", args.output.display()))?;
    Ok(jobs)
}

/// Whether `output` is `input` or lies inside it (paths resolved through links, also for an
/// output that does not exist yet).
fn overlaps(output: &Path, input: &Path) -> bool {
    let Ok(input) = input.canonicalize() else {
        return false;
    };
    let resolved = output.canonicalize().or_else(|_| {
        let parent = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = output.file_name().ok_or(std::io::ErrorKind::InvalidInput)?;
        parent.canonicalize().map(|p| p.join(name))
    });
    match resolved {
        Ok(out) => out == input || out.starts_with(&input),
        Err(_) => false,
    }
}

/// A folder that itself holds DICOM images (rather than sub-folders of cases).
fn is_dicom_series(dir: &Path) -> bool {
    dir.is_dir() && dicom::list_series(dir).is_ok()
}

fn case_name(path: &Path) -> Option<String> {
    if path.is_dir() {
        path.file_name().and_then(|n| n.to_str()).map(str::to_owned)
    } else {
        nifti_stem(path).map(str::to_owned)
    }
}

fn parse_precision(s: &str) -> std::result::Result<infer::predict::Precision, String> {
    infer::predict::Precision::parse(s).map_err(|e| e.to_string())
}

fn parse_xy(s: &str) -> Result<[f64; 2], String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [x, y] = parts.as_slice() else {
        return Err(format!("expected X,Y (two numbers in mm), got '{s}'"));
    };
    let parse = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| format!("'{v}' is not a positive spacing in mm"))
    };
    Ok([parse(x)?, parse(y)?])
}
