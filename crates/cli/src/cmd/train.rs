//! `ncct2ctpa train`: train RegGAN on a prepared dataset, or, with no `--data`, the built-in
//! phantom demo (the README's first command).
//!
//! Configuration: `--config FILE.toml` over the defaults of `--preset` (or the file's
//! `preset`), then the flags below, which become one more layer of keys
//! ([`train::config::Layer`]; `--set KEY=VALUE` reaches any key, so a new key needs no code
//! here). A new run goes into `--run` (which must not hold another run: that is an error,
//! never an overwrite); `--resume` continues the run in `--run` from its latest checkpoint
//! with the run's own config, exactly as if it had not stopped: only where it runs (`--device`,
//! `--threads`, the progress bar) may change.
//!
//! Launched by `torchrun` or `srun` (their environment, see `train::distributed`), each
//! process is one rank of a data-parallel run; rank 0 writes the run folder and prints the
//! summary.

use anyhow::Context;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use train::config::{Layer, TrainConfig};
use train::trainer::{scores_line, RunSpec, Start};
use train::validate::Scores;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Prepared dataset (from `ncct2ctpa prepare`). Without it: the built-in phantom demo
    /// (generated once under --demo-data, then the tiny preset on the CPU).
    #[arg(long, value_name = "PREPARED_DIR")]
    data: Option<PathBuf>,
    /// Training configuration (TOML; see configs/default.toml). Repeatable: later files
    /// override earlier ones key by key (e.g. configs/demo.toml then an ablation arm). Flags
    /// override them all.
    #[arg(long, value_name = "FILE.toml")]
    config: Vec<PathBuf>,
    /// Run folder. Default: runs/demo (demo; runs/demo-2, ... if taken) or runs/train.
    /// `--run-dir` is the same flag, for under torchrun, whose own parser takes `--run` for
    /// an abbreviation of its `--run-path`.
    #[arg(long, value_name = "DIR", visible_alias = "run-dir")]
    run: Option<PathBuf>,
    /// Continue the run in --run from checkpoints/latest, with its own config.
    #[arg(long, requires = "run")]
    resume: bool,
    /// Model preset: default, tiny or reggan.
    #[arg(long)]
    preset: Option<String>,
    /// Total training steps (overrides schedule.steps and schedule.epochs).
    #[arg(long)]
    steps: Option<u64>,
    /// Training length in epochs (passes over the training slices) instead of steps.
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<f64>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Square crop side in pixels (a multiple of the networks' 2^depth).
    #[arg(long)]
    crop_size: Option<usize>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Learning rate of both optimizers.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// libtorch CPU threads (0: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Train without the registration network R (the R-off arm of the RegGAN experiment).
    #[arg(long)]
    no_registration: bool,
    /// Validate (and redraw curves.png) every N steps.
    #[arg(long)]
    val_every: Option<u64>,
    /// Save checkpoints/latest every N steps.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Write a sample grid every N steps.
    #[arg(long)]
    sample_every: Option<u64>,
    /// Log training metrics every N steps.
    #[arg(long)]
    log_every: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// With --resume: continue on a prepared dataset other than the run's own (refused
    /// otherwise; the same dataset at another path is always fine).
    #[arg(long, requires = "resume")]
    allow_other_data: bool,
    /// Set any configuration key, e.g. `--set loss.lung_weight=5 --set amp=\"bf16\"`
    /// (repeatable; a TOML value, else a string). Applied after the flags above.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Data parallel (under torchrun or srun): how long a rank waits for the others at the
    /// rendezvous, in a collective or at a barrier (rank 0 validating) before failing.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    dist_timeout: u64,
    /// Where the demo keeps its phantom dataset (raw/ and prepared/).
    #[arg(long, value_name = "DIR", default_value = "data/phantom-demo")]
    demo_data: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let demo = args.data.is_none();
    let launch = train::distributed::Launch::from_env().context("the launcher's environment")?;
    if launch.is_some() && demo && !args.resume {
        anyhow::bail!(
            "data-parallel training needs --data (prepare the dataset once before launching: \
             the ranks must not each generate the demo phantoms)"
        );
    }
    let flags = flag_layer(&args)?;
    let start = if args.resume {
        Start::Resume {
            local: flags,
            hooks: Default::default(),
            allow_other_data: args.allow_other_data,
        }
    } else {
        let cfg = match (args.config.is_empty(), demo) {
            (false, _) => TrainConfig::load_layers(
                &args.config,
                &flags,
                if demo { "tiny" } else { "default" },
            )?,
            (true, true) => train::demo::train_config_with(&flags)?,
            (true, false) => {
                TrainConfig::from_layers(vec![flags.0], "default").context("the command line")?
            }
        };
        Start::New(Box::new(cfg))
    };
    let recorded = match (&args.data, &args.run, args.resume) {
        (None, Some(run), true) => train::run_dir::RunDir::open_existing(run)?
            .read_dataset_record()?
            .map(|r| r.path),
        _ => None,
    };
    let data = match (&args.data, recorded) {
        (Some(d), _) => d.clone(),
        (None, Some(recorded)) => {
            errln!(
                "ncct2ctpa train: resuming on the run's own data, {}",
                recorded.display()
            );
            recorded
        }
        (None, None) => {
            errln!("ncct2ctpa train: no --data given, running the built-in phantom demo");
            train::demo::ensure_dataset(&args.demo_data, &|s| errln!("  {s}"))?
        }
    };
    let run = match (&args.run, demo) {
        (Some(r), _) => r.clone(),
        (None, true) => train::run_dir::next_free(&PathBuf::from("runs/demo")),
        (None, false) => train::run_dir::next_free(&PathBuf::from("runs/train")),
    };
    errln!(
        "{} run {} ...",
        if args.resume {
            "resuming"
        } else {
            "training into"
        },
        run.display()
    );
    let stop = train::StopFlag::default();
    stop.install()
        .context("installing the SIGTERM/SIGINT/SIGUSR1 handlers")?;
    let timeout = std::time::Duration::from_secs(args.dist_timeout);
    let dist = launch
        .map(|l| train::distributed::Distributed::connect(l, timeout).map(std::sync::Arc::new))
        .transpose()?;
    let follower = dist.as_ref().filter(|d| !d.is_leader()).cloned();
    let spec = RunSpec {
        data,
        run,
        start,
        stop,
        dist,
    };
    let outcome =
        train::train(&spec).with_context(|| format!("training run {}", spec.run.display()))?;
    if let Some(d) = follower {
        errln!(
            "{}: {} steps done{}; rank 0 reports the run",
            d.describe(),
            outcome.steps,
            outcome
                .stopped
                .map(|s| format!(" (stopped by {s})"))
                .unwrap_or_default()
        );
        if outcome.stopped.is_some() {
            return Ok(ExitCode::from(train::signals::EXIT_STOPPED));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(signal) = outcome.stopped {
        errln!(
            "{signal}: stopped after step {} with checkpoints/latest written; continue with \
             `ncct2ctpa train --run {} --resume` (exit code {})",
            outcome.steps,
            outcome.run.display(),
            train::signals::EXIT_STOPPED
        );
        return Ok(ExitCode::from(train::signals::EXIT_STOPPED));
    }

    outln!("{}", summary_table(&outcome.last, &outcome.baseline));
    outln!(
        "run {}: {} steps on {} in {:.1} s{}",
        outcome.run.display(),
        outcome.steps,
        outcome.device,
        outcome.wall.as_secs_f64(),
        outcome
            .best
            .as_ref()
            .map(|b| format!("; best {} {:.2} at step {}", b.metric, b.value, b.step))
            .unwrap_or_default()
    );
    outln!(
        "  final validation: {}",
        scores_line(&outcome.last, &outcome.baseline)
    );
    outln!(
        "  look at {0}/samples/, {0}/curves.png; checkpoints in {0}/checkpoints/",
        outcome.run.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The flags as a configuration layer: each named flag is its key, then `--set` pairs.
fn flag_layer(args: &Args) -> anyhow::Result<Layer> {
    let mut l = Layer::default();
    if let Some(v) = &args.preset {
        l.set("preset", v.as_str());
    }
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let size = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    let u64_keys = [
        ("schedule.steps", args.steps),
        ("seed", args.seed),
        ("log.val_every", args.val_every),
        ("log.checkpoint_every", args.checkpoint_every),
        ("log.sample_every", args.sample_every),
        ("log.every", args.log_every),
    ];
    for (key, v) in u64_keys {
        if let Some(v) = v {
            l.set(key, int(v));
        }
    }
    let usize_keys = [
        ("data.batch_size", args.batch_size),
        ("data.crop_size", args.crop_size),
        ("threads", args.threads),
    ];
    for (key, v) in usize_keys {
        if let Some(v) = v {
            l.set(key, size(v));
        }
    }
    if let Some(v) = args.epochs {
        l.set("schedule.epochs", v);
    }
    if let Some(v) = &args.device {
        l.set("device", v.as_str());
    }
    if let Some(v) = args.lr {
        l.set("optim.generator.lr", v)
            .set("optim.discriminator.lr", v);
    }
    if args.no_registration {
        l.set("registration", false);
    }
    // Whether to draw a progress bar is this process's business, never the run's.
    l.set(
        "log.progress",
        !args.no_progress && std::io::stderr().is_terminal(),
    );
    for assignment in &args.set {
        l.assign(assignment).context("--set")?;
    }
    Ok(l)
}

/// The final table: model vs the NCCT-as-prediction baseline, per metric and region.
fn summary_table(model: &Scores, base: &Scores) -> String {
    let rows = [
        ("MAE body (HU)", model.mae_body, base.mae_body, false),
        ("MAE lung (HU)", model.mae_lung, base.mae_lung, false),
        ("PSNR body (dB)", model.psnr_body, base.psnr_body, true),
        ("PSNR lung (dB)", model.psnr_lung, base.psnr_lung, true),
        ("SSIM body", model.ssim_body, base.ssim_body, true),
        ("SSIM lung", model.ssim_lung, base.ssim_lung, true),
        ("MAE body reg", model.mae_body_reg, base.mae_body_reg, false),
        ("MAE lung reg", model.mae_lung_reg, base.mae_lung_reg, false),
        ("MAE contrast", model.mae_contrast, base.mae_contrast, false),
        (
            "SSIM body reg",
            model.ssim_body_reg,
            base.ssim_body_reg,
            true,
        ),
    ];
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
    let mut out = format!(
        "{:<16} {:>12} {:>12}  {}\n",
        "validation", "model", "NCCT", "better"
    );
    for (name, m, b, higher) in rows {
        let better = match (m, b) {
            (Some(m), Some(b)) if (higher && m > b) || (!higher && m < b) => "model",
            (Some(_), Some(_)) => "NCCT",
            _ => "-",
        };
        out.push_str(&format!("{name:<16} {:>12} {:>12}  {better}\n", f(m), f(b)));
    }
    out
}
