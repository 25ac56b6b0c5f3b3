//! `ncct2ctpa bench`: how fast ncct2ctpa trains, infers and loads data, and how that compares
//! with the same model and step in PyTorch, measured in one run on one machine.
//!
//! For each configuration (preset, crop size, batch) the Rust side measures
//! 1. the training step (`train::step::train_step`): median, p10, p90 of `steps` steps after
//!    `warmup`, and its parts ([`step::parts`]), timed inside the trainer's own step;
//! 2. FLOPs of the step from the architecture ([`model::flops`]) and the achieved FLOP/s;
//! 3. inference through `infer::predict::Translator` on a few 512x512 slices, extrapolated to a
//!    512x512x300 volume;
//! 4. data loading from a prepared store with augmentation, alone and while training runs;
//! 5. peak resident memory of each phase ([`memory`]).
//!
//! Optionally the step runs with weights and inputs in channels-last memory format
//! ([`layout`]) on both sides, and a whole epoch on a prepared store, data loading included,
//! is compared with a PyTorch `DataLoader` epoch ([`epoch`]).
//!
//! With a Python that has PyTorch, it then runs `tools/pytorch_twin/bench.py` with the same
//! preset, sizes, thread count, step counts and *initial weights* (ours, saved to a temporary
//! folder), and reports ours / PyTorch. Both first steps start from the same weights and batch,
//! so their losses must agree: the table prints them as a check that the two sides compute the
//! same thing.

pub mod data;
pub mod epoch;
pub mod infer;
pub mod layout;
pub mod memory;
pub mod pytorch;
pub mod report;
pub mod stats;
pub mod step;
pub mod workload;

use anyhow::Context;
use dataset::manifest::IntensityWindow;
use model::flops::{generator_forward_flops, step_flops};
use report::{BenchReport, ConfigReport, REPORT_SCHEMA};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::Device;
use train::config::TrainConfig;
use train::nets::Nets;

/// One benchmark configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    pub preset: String,
    pub size: usize,
    pub batch: usize,
}

impl std::str::FromStr for BenchConfig {
    type Err = String;

    /// `PRESET:SIZE:BATCH`, e.g. `tiny:128:4`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [preset, size, batch] = parts.as_slice() else {
            return Err(format!(
                "{s:?}: expected PRESET:SIZE:BATCH, e.g. tiny:128:4"
            ));
        };
        let num = |v: &str, what: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{s:?}: {what} must be a positive integer, got {v:?}"))
        };
        model::config::ModelConfig::preset(preset).map_err(|e| e.to_string())?;
        Ok(Self {
            preset: (*preset).to_owned(),
            size: num(size, "SIZE")?,
            batch: num(batch, "BATCH")?,
        })
    }
}

/// Where the PyTorch side comes from.
#[derive(Debug, Clone)]
pub struct TorchSide {
    pub python: PathBuf,
    pub script: PathBuf,
}

/// Everything `ncct2ctpa bench` takes.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub configs: Vec<BenchConfig>,
    pub steps: usize,
    pub warmup: usize,
    /// Whole-step timing rounds: ours and PyTorch's alternate this many times (each round
    /// `warmup + steps` steps on each side, PyTorch in a fresh process) and the samples are
    /// pooled, so that a slow spell of a shared machine lands on both sides. Parts,
    /// inference, data loading and memory are measured in the first round only.
    pub rounds: usize,
    /// Intra-op threads on both sides.
    pub threads: usize,
    pub device: Device,
    /// 512 in the report's figures.
    pub infer_size: usize,
    /// Slices actually run (0 skips inference).
    pub infer_slices: usize,
    pub infer_batch: usize,
    /// Prepared dataset for data loading; `None` builds a 2-case phantom in a temporary folder.
    pub data: Option<PathBuf>,
    /// Skip data loading.
    pub no_data: bool,
    pub loader_threads: usize,
    /// Batches for the loading-alone figure.
    pub data_batches: u64,
    /// Weights and inputs of the step in channels-last memory format (both sides).
    pub channels_last: bool,
    /// Time the step's parts (both sides).
    pub parts: bool,
    /// A whole epoch with data loading (ours vs a PyTorch DataLoader).
    pub epoch: Option<epoch::EpochSpec>,
    pub torch: Option<TorchSide>,
}

/// Runs the benchmark. `progress` receives one line per phase.
pub fn run(opts: &BenchOptions, progress: &dyn Fn(&str)) -> anyhow::Result<BenchReport> {
    tch::set_num_threads(opts.threads as i32);
    let tmp = tempfile::tempdir().context("creating a temporary folder")?;
    let store = if opts.no_data || opts.configs.is_empty() {
        None
    } else {
        let root = match &opts.data {
            Some(p) => p.clone(),
            None => {
                progress("building a 2-case phantom store for the data-loading figures");
                data::phantom_store(tmp.path(), 2)?
            }
        };
        Some(data::Store::open(&root)?)
    };
    let mut configs = Vec::new();
    for c in &opts.configs {
        configs.push(run_config(opts, c, store.as_ref(), tmp.path(), progress)?);
    }
    let epoch = match &opts.epoch {
        Some(spec) => {
            let script = pytorch::twin_script("epoch.py");
            let torch = opts
                .torch
                .as_ref()
                .map(|t| (t.python.as_path(), script.as_path()));
            Some(epoch::measure(
                spec,
                opts.device,
                tmp.path(),
                torch,
                progress,
            )?)
        }
        None => None,
    };
    Ok(BenchReport {
        schema: REPORT_SCHEMA,
        device: format!("{:?}", opts.device),
        threads: opts.threads,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average: load_average(),
        configs,
        epoch,
        pytorch_skipped: match &opts.torch {
            Some(_) => None,
            None => Some("no --pytorch PYTHON (or NCCT2CTPA_PYTHON) given".into()),
        },
    })
}

fn run_config<'a>(
    opts: &'a BenchOptions,
    c: &BenchConfig,
    store: Option<&data::Store>,
    tmp: &std::path::Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<ConfigReport> {
    let label = format!("{}:{}:{}", c.preset, c.size, c.batch);
    let mut cfg = TrainConfig::with_preset(&c.preset)?;
    cfg.data.batch_size = c.batch;
    cfg.data.crop_size = c.size;
    cfg.threads = opts.threads;
    let multiple = cfg.model.size_multiple() as usize;
    anyhow::ensure!(
        c.size.is_multiple_of(multiple),
        "{label}: the crop size must be a multiple of {multiple} for preset {}",
        c.preset
    );
    let device = opts.device;
    let mut nets = Nets::new(&cfg, device);
    let mut optims = nets.optimizers(&cfg)?;
    let init = tmp.join(format!("init-{}-{}-{}", c.preset, c.size, c.batch));
    std::fs::create_dir_all(&init)?;
    nets.save(&init)
        .context("saving the initial weights for the PyTorch side")?;
    let mut batch = workload::synthetic_batch(c.batch, c.size, device)?;
    if opts.channels_last {
        layout::nets_to_channels_last(&nets);
        batch = layout::batch_to_channels_last(&batch);
    }
    let mut memory = BTreeMap::new();

    // 1. the whole step
    progress(&format!(
        "{label}: {} training steps after {} warm-up",
        opts.steps, opts.warmup
    ));
    // `warmup + steps` whole steps on our side (every round)
    let whole_steps = |nets: &mut Nets, optims: &mut train::nets::Optimizers| {
        step::time_train_steps(nets, optims, &batch, &cfg, opts.warmup, opts.steps, device)
    };
    let (timed, mem) = memory::measure(|| whole_steps(&mut nets, &mut optims));
    let (times, first) = timed?;
    let step_summary = times.wall;
    if let Some(m) = mem {
        memory.insert("step".to_owned(), m);
    }

    // 2. its parts
    let parts = if opts.parts {
        progress(&format!("{label}: the step's parts"));
        step::time_parts(
            &mut nets,
            &mut optims,
            &batch,
            &cfg,
            1,
            opts.steps,
            (opts.warmup + opts.steps) as u64 + 1,
        )?
    } else {
        Vec::new()
    };
    let flops = step_flops(
        &cfg.model,
        true,
        c.batch as u64,
        c.size as u64,
        c.size as u64,
    );

    // 3. inference
    let window = IntensityWindow::default();
    let infer = if opts.infer_slices > 0 {
        progress(&format!(
            "{label}: inference on {} slices of {}x{}",
            opts.infer_slices, opts.infer_size, opts.infer_size
        ));
        let (r, mem) = memory::measure(|| {
            infer::measure(
                &nets.g,
                window,
                device,
                opts.infer_size,
                opts.infer_slices,
                opts.infer_batch,
            )
        });
        if let Some(m) = mem {
            memory.insert("infer".to_owned(), m);
        }
        Some(r?)
    } else {
        None
    };
    let infer_g_flops = infer.as_ref().map(|_| {
        generator_forward_flops(
            &cfg.model.generator,
            1,
            opts.infer_size as u64,
            opts.infer_size as u64,
        )
    });

    // 4. data loading
    let data = match store {
        Some(store) => {
            progress(&format!("{label}: data loading"));
            let (r, mem) = memory::measure(|| {
                data::measure(
                    store,
                    &data::LoadSpec {
                        crop: c.size,
                        batch: c.batch,
                        workers: opts.loader_threads,
                        batches: opts.data_batches,
                        steps: opts.steps.max(2),
                    },
                    step_summary.median,
                    |k| {
                        let t0 = std::time::Instant::now();
                        train::step::train_step(
                            &mut nets,
                            &mut optims,
                            &batch,
                            &cfg,
                            10_000 + k as u64,
                            1.0,
                            false,
                        )?;
                        step::sync(device);
                        Ok(t0.elapsed().as_secs_f64())
                    },
                )
            });
            if let Some(m) = mem {
                memory.insert("data".to_owned(), m);
            }
            Some(r?)
        }
        None => None,
    };

    // 5. PyTorch (same shapes, threads, steps and initial weights)
    let torch_args = |t: &'a TorchSide, infer_slices: usize, parts: bool| pytorch::TorchArgs {
        python: &t.python,
        script: &t.script,
        preset: &c.preset,
        size: c.size,
        batch: c.batch,
        threads: opts.threads,
        steps: opts.steps,
        warmup: opts.warmup,
        init: &init,
        infer_size: opts.infer_size,
        infer_slices,
        infer_batch: opts.infer_batch,
        window: (window.min, window.max),
        channels_last: opts.channels_last,
        parts,
    };
    let pytorch = match &opts.torch {
        Some(t) => {
            progress(&format!(
                "{label}: the PyTorch side ({})",
                t.python.display()
            ));
            Some(pytorch::run(&torch_args(t, opts.infer_slices, opts.parts))?)
        }
        None => None,
    };

    // 6. further alternated rounds of the whole step, pooled
    let (mut step_summary, mut step_cpu, mut pytorch) = (step_summary, times.cpu, pytorch);
    for round in 2..=opts.rounds {
        progress(&format!("{label}: round {round} of {}", opts.rounds));
        let (more, _) = whole_steps(&mut nets, &mut optims)?;
        step_summary = stats::pooled(&step_summary, &more.wall);
        step_cpu = step_cpu.zip(more.cpu).map(|(a, b)| stats::pooled(&a, &b));
        if let (Some(t), Some(theirs)) = (&opts.torch, pytorch.as_mut()) {
            // the step only: no inference, no parts
            let again = pytorch::run(&torch_args(t, 0, false))?;
            theirs.step = stats::pooled(&theirs.step, &again.step);
            theirs.step_cpu = theirs
                .step_cpu
                .take()
                .zip(again.step_cpu)
                .map(|(a, b)| stats::pooled(&a, &b));
        }
    }
    Ok(ConfigReport {
        preset: c.preset.clone(),
        size: c.size,
        batch: c.batch,
        steps: opts.steps,
        warmup: opts.warmup,
        rounds: opts.rounds.max(1),
        channels_last: opts.channels_last,
        achieved_flops_per_s: flops.total as f64 / step_summary.median,
        step: step_summary,
        step_cpu,
        parts,
        first_loss_g: first.loss_g,
        first_loss_d: first.loss_d,
        flops,
        infer,
        infer_g_flops,
        data,
        memory,
        pytorch,
    })
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Tests that build networks, train or measure the process's memory run one at a time: the
/// memory figures are process-wide (a parallel test's allocations would move them) and
/// libtorch's RNG and thread pool are shared.
#[cfg(test)]
pub(crate) fn serial_test() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_configs() {
        let c: BenchConfig = "tiny:128:4".parse().unwrap();
        assert_eq!(
            c,
            BenchConfig {
                preset: "tiny".into(),
                size: 128,
                batch: 4
            }
        );
        assert!("tiny:128".parse::<BenchConfig>().is_err());
        assert!("huge:128:4"
            .parse::<BenchConfig>()
            .unwrap_err()
            .contains("unknown model preset"));
        assert!("tiny:0:4"
            .parse::<BenchConfig>()
            .unwrap_err()
            .contains("SIZE"));
    }

    /// Rounds pool the whole-step samples: two rounds of two steps give four samples, and the
    /// first round's parts and losses are kept.
    #[test]
    fn rounds_pool_the_step_samples() {
        let _serial = crate::serial_test();
        let opts = BenchOptions {
            configs: vec!["tiny:32:1".parse().unwrap()],
            steps: 2,
            warmup: 0,
            rounds: 2,
            threads: 1,
            device: Device::Cpu,
            infer_size: 64,
            infer_slices: 0,
            infer_batch: 1,
            data: None,
            no_data: true,
            loader_threads: 1,
            data_batches: 1,
            channels_last: false,
            parts: false,
            epoch: None,
            torch: None,
        };
        let report = run(&opts, &|_| {}).unwrap();
        let c = &report.configs[0];
        assert_eq!(c.rounds, 2);
        assert_eq!(c.step.samples.len(), 4);
        assert!(c.step.samples.iter().all(|t| *t > 0.0));
        if let Some(cpu) = &c.step_cpu {
            assert_eq!(cpu.samples.len(), 4);
        }
        assert!(c.first_loss_g.is_finite() && c.first_loss_g > 0.0);
        assert!(report.table().contains("x 2 alternated rounds"));
    }
}
