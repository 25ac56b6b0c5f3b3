//! `ncct2ctpa bench`: training step, inference, data loading, memory and FLOPs, ours and (with
//! `--pytorch`) PyTorch's side by side. The logic lives in the `bench` crate.

use anyhow::Context;
use bench::{BenchConfig, BenchOptions, TorchSide};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configurations to measure, PRESET:SIZE:BATCH (repeatable).
    #[arg(long = "config", value_name = "PRESET:SIZE:BATCH",
          default_values = ["tiny:128:4", "default:256:1"])]
    configs: Vec<BenchConfig>,
    /// Timed training steps per configuration (after the warm-up).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Rounds of the whole-step timing: ours and PyTorch's alternate this many times and
    /// each side's samples are pooled (a slow spell of a shared machine then hits both)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Intra-op threads, the same on both sides (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Device of the Rust side: cpu, cuda, cuda:N or auto (PyTorch's side runs on the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Slices run through inference at --infer-size (0 skips it); the 512x512x300 figure is
    /// extrapolated from them.
    #[arg(long, default_value_t = 4)]
    infer_slices: usize,
    /// Side of the inference slices.
    #[arg(long, default_value_t = 512)]
    infer_size: usize,
    /// Slices per inference forward pass.
    #[arg(long, default_value_t = 4)]
    infer_batch: usize,
    /// Prepared dataset for the data-loading figures (default: a 2-case phantom built in a
    /// temporary folder).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Skip the data-loading figures.
    #[arg(long)]
    no_data: bool,
    /// Data-loader threads.
    #[arg(long, default_value_t = 2)]
    loader_threads: usize,
    /// Batches loaded for the loading-alone figure.
    #[arg(long, default_value_t = 20)]
    data_batches: u64,
    /// Run the step with weights and inputs in channels-last (NHWC) memory format, both sides.
    #[arg(long)]
    channels_last: bool,
    /// Skip the per-part timing of the step (both sides).
    #[arg(long)]
    no_parts: bool,
    /// Also time a whole training epoch with data loading on a prepared store, ours vs a
    /// PyTorch DataLoader epoch (tools/pytorch_twin/epoch.py).
    #[arg(long)]
    epoch: bool,
    /// Only the epoch (implies --epoch; no step, inference or loading figures).
    #[arg(long)]
    epoch_only: bool,
    /// Prepared store of the epoch (default: the demo's phantom set, data/phantom-demo,
    /// generated once as `ncct2ctpa train` does).
    #[arg(long, value_name = "PREPARED_DIR")]
    epoch_data: Option<PathBuf>,
    /// Preset, crop and batch of the epoch (default: the demo's).
    #[arg(long, value_name = "PRESET:CROP:BATCH", default_value = "tiny:96:4")]
    epoch_config: BenchConfig,
    /// Cap on the epoch's steps (0: the whole epoch).
    #[arg(long, default_value_t = 0)]
    epoch_steps: usize,
    /// Loader threads / DataLoader workers in the epoch (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    epoch_workers: usize,
    /// Epochs per side, alternating ours and PyTorch's; the median is reported.
    #[arg(long, default_value_t = 1)]
    epoch_repeats: usize,
    /// A Python with the pinned PyTorch (`make setup-twin`: .venv-twin/bin/python): runs the PyTorch twin too.
    #[arg(long, env = "NCCT2CTPA_PYTHON", value_name = "PYTHON")]
    pytorch: Option<PathBuf>,
    /// The PyTorch side's script (default: tools/pytorch_twin/bench.py).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench.json")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let device = model::device::select(&args.device)?;
    let torch = match args.pytorch {
        Some(python) => {
            let script = args.script.unwrap_or_else(bench::pytorch::default_script);
            anyhow::ensure!(
                script.is_file(),
                "{}: the PyTorch benchmark script is missing (pass --script)",
                script.display()
            );
            Some(TorchSide { python, script })
        }
        None => None,
    };
    if let Some(load) = bench::load_average() {
        if load > threads as f64 * 0.5 {
            tracing::warn!("load average {load:.2}: other processes compete for the cores; figures will be noisy");
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let epoch = if args.epoch || args.epoch_only {
        let data = match args.epoch_data {
            Some(d) => d,
            None => train::demo::ensure_dataset(std::path::Path::new("data/phantom-demo"), &|m| {
                tracing::info!("{m}")
            })?,
        };
        Some(bench::epoch::EpochSpec {
            data,
            preset: args.epoch_config.preset,
            crop: args.epoch_config.size,
            batch: args.epoch_config.batch,
            max_steps: args.epoch_steps,
            threads,
            workers: if args.epoch_workers == 0 {
                cpus
            } else {
                args.epoch_workers
            },
            prefetch: 2,
            repeats: args.epoch_repeats,
        })
    } else {
        None
    };
    let opts = BenchOptions {
        configs: if args.epoch_only {
            Vec::new()
        } else {
            args.configs
        },
        steps: args.steps,
        warmup: args.warmup,
        rounds: args.rounds as usize,
        threads,
        device,
        infer_size: args.infer_size,
        infer_slices: args.infer_slices,
        infer_batch: args.infer_batch,
        data: args.data,
        no_data: args.no_data,
        loader_threads: args.loader_threads,
        data_batches: args.data_batches,
        channels_last: args.channels_last,
        parts: !args.no_parts,
        epoch,
        torch,
    };
    let report = bench::run(&opts, &|line| tracing::info!("{line}"))?;
    out!("{}", report.table());
    report
        .write_json(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    tracing::info!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
