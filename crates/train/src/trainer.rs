//! The training loop, top to bottom: set up (run folder, data, networks, resume), then for each
//! step: batch, RegGAN step, log, validate, sample, checkpoint.

use crate::checkpoint::{self, Best, TrainState};
use crate::config::TrainConfig;
use crate::events::{num, EventLog, HumanLog};
use crate::nets::Nets;
use crate::plot::draw_curves;
use crate::run_dir::RunDir;
use crate::step::{train_step, BatchTensors, NonFinite, StepStats};
use crate::validate::{Scores, Validator};
use anyhow::Context;
use dataset::augment::SlicePair;
use dataset::manifest::{IntensityWindow, Split};
use dataset::sampler::{
    split_keys, Loader, Sampler, SamplerConfig, SamplerError, SliceKey, SliceSource,
};
use dataset::store::PreparedDataset;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Tensor;

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Prepared dataset folder.
    pub data: PathBuf,
    /// Run folder.
    pub run: PathBuf,
    /// Continue the run in `run` from its `checkpoints/latest` (the config is the run's own).
    pub resume: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run: PathBuf,
    /// Steps completed (the run's total).
    pub steps: u64,
    /// The step this process started from (0, or the resumed checkpoint's).
    pub started_at: u64,
    /// Validation scores at the last step.
    pub last: Scores,
    /// The NCCT-as-prediction scores.
    pub baseline: Scores,
    pub best: Option<Best>,
    pub device: String,
    /// Wall time of this process's training (setup included).
    pub wall: Duration,
}

/// Reads slices from the prepared store, normalised with the run's window (which may differ
/// from the dataset's: the store keeps HU).
struct WindowedSource {
    ds: Arc<PreparedDataset>,
    window: IntensityWindow,
}

impl SliceSource for WindowedSource {
    fn read_pair(&self, key: SliceKey) -> Result<SlicePair, SamplerError> {
        let s = self
            .ds
            .slice_at(key.case, key.z)
            .map_err(|e| SamplerError::Read {
                key,
                source: Box::new(e),
            })?;
        let w = self.window;
        Ok(SlicePair {
            ncct: s.ncct.mapv(|v| w.normalize(f32::from(v))),
            ctpa: s.ctpa.mapv(|v| w.normalize(f32::from(v))),
            lung: s.lung.to_owned(),
            body: s.body.to_owned(),
        })
    }
}

/// Trains `cfg` (ignored when resuming: the run's own config is used) on `spec.data` into
/// `spec.run`.
pub fn train(cfg: TrainConfig, spec: &RunSpec) -> anyhow::Result<TrainOutcome> {
    let t0 = Instant::now();
    let ds = Arc::new(
        PreparedDataset::open(&spec.data)
            .with_context(|| format!("opening the prepared dataset {}", spec.data.display()))?,
    );

    // 1. Configuration and run folder.
    let (cfg, run) = if spec.resume {
        let run = RunDir::open_existing(&spec.run)?;
        let mut saved = TrainConfig::load(&run.config(), "default")?;
        saved
            .validate()
            .with_context(|| format!("config of {}", run.root().display()))?;
        // Whether to draw a progress bar is this process's business, not the run's.
        saved.log.progress = cfg.log.progress;
        (saved, run)
    } else {
        let mut cfg = cfg;
        let probe = split_keys(&ds, Split::Train, cfg.data.min_body_fraction)?;
        cfg.resolve(ds.window(), probe.len())?;
        let run = RunDir::create_new(&spec.run)?;
        write_text_atomic(&run.config(), &cfg.to_toml_string()?)?;
        (cfg, run)
    };
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = model::device::select(&cfg.device)?;
    let mut human = HumanLog::open(&run.log())?;

    // 2. Data: training slices, sampler and validation volumes.
    let keys = split_keys(&ds, Split::Train, cfg.data.min_body_fraction)?;
    if keys.is_empty() {
        anyhow::bail!(
            "{}: no training slices (no case in the train split has a slice with at least {} of \
             body pixels)",
            spec.data.display(),
            cfg.data.min_body_fraction
        );
    }
    let source = Arc::new(WindowedSource {
        ds: Arc::clone(&ds),
        window: cfg.window(),
    });
    let sampler = Arc::new(Sampler::new(
        source,
        keys,
        SamplerConfig {
            batch_size: cfg.data.batch_size,
            crop_size: cfg.data.crop_size,
            fill: -1.0,
            seed: cfg.seed,
            augment: cfg.data.augment.clone(),
        },
    )?);
    let validator = Validator::load(
        &ds,
        cfg.window(),
        cfg.size_multiple(),
        cfg.log.val_max_cases,
    )?;

    // 3. Networks, optimizers, and the state to continue from.
    let mut nets = Nets::new(&cfg, device);
    // The perceptual loss's frozen VGG (checked against the recorded SHA-256) and the log
    // lines describing the image loss terms.
    let image_lines = crate::image_losses::attach(&mut nets, &cfg, device)?;
    let mut opts = nets.optimizers(&cfg)?;
    let total = cfg.schedule.steps;
    let (start, mut best, mut events) = if spec.resume {
        let dir = checkpoint::resume_dir(&run)?;
        let state = checkpoint::restore(&dir, &mut nets, &mut opts)?;
        let mut events = EventLog::open_resumed(&run.metrics(), state.step)?;
        events.write(
            state.step,
            "resume",
            &[("from", Value::from(dir.display().to_string()))],
        )?;
        human.line(&format!(
            "resumed from {} at step {}",
            dir.display(),
            state.step
        ));
        (state.step, state.best, events)
    } else {
        (0, None, EventLog::open(&run.metrics())?)
    };
    let summary = model::summary::NetworkCount::of(&nets.gr_store);
    let start_msg = format!(
        "run {} | device {device:?} | data {} ({} training slices, {} validation cases) | preset \
         {} | registration {} | steps {}..{total} | batch {} x {}px | G+R variables {} ({} \
         params)",
        run.root().display(),
        spec.data.display(),
        sampler.slices_per_epoch(),
        validator.cases.len(),
        cfg.preset,
        if cfg.registration { "on" } else { "off" },
        start + 1,
        cfg.data.batch_size,
        cfg.data.crop_size,
        nets.gr_store.len(),
        summary.total,
    );
    human.line(&start_msg);
    tracing::info!("{start_msg}");
    for line in &image_lines {
        human.line(line);
        tracing::info!("{line}");
    }
    if start == 0 {
        events.write(
            0,
            "start",
            &[
                ("device", Value::from(format!("{device:?}"))),
                ("train_slices", Value::from(sampler.slices_per_epoch())),
                ("val_cases", Value::from(validator.cases.len())),
                ("total_steps", Value::from(total)),
            ],
        )?;
    }
    if start >= total {
        human.line(&format!(
            "nothing to do: the run already completed {start} of {total} steps"
        ));
    }

    // 4. The loop.
    let mut loader = Loader::spawn(
        Arc::clone(&sampler),
        start..total,
        cfg.data.loader_threads,
        cfg.data.prefetch,
    )?;
    let pb = progress_bar(&cfg, start, total);
    let mut last = Scores::default();
    let mut starved = 0u64;
    let mut lung_log = crate::curriculum::LungWeightLog::default();
    let warn_after = Duration::from_millis(cfg.log.starve_warn_ms);
    for step in start + 1..=total {
        let batch = loader
            .next_batch()
            .ok_or_else(|| anyhow::anyhow!("the data loader ended early at step {step}"))?
            .with_context(|| format!("loading the batch of step {step}"))?;
        // The first batch always waits for the loader to start.
        if step > start + 1 && loader.last_wait() > warn_after {
            starved += 1;
            if starved == 1 || starved.is_multiple_of(100) {
                tracing::warn!(
                    "step {step} waited {:.0} ms for its batch ({starved} starved steps so far): \
                     the data loader is slower than training; raise data.loader_threads",
                    loader.last_wait().as_secs_f64() * 1e3
                );
            }
        }
        let tensors = BatchTensors::from_batch(&batch, device)?;
        pb.suspend(|| {
            crate::phases::log_switch(&cfg.progressive, step, total, &mut events, &mut human)
        })?;
        let lr_factor = cfg.schedule.lr_factor(step);
        let log_now = is_due(step, cfg.log.every, total);
        let stats = match train_step(
            &mut nets, &mut opts, &tensors, &cfg, step, lr_factor, log_now,
        ) {
            Ok(s) => s,
            Err(nf) => {
                pb.abandon();
                return Err(stop_non_finite(
                    &run,
                    &nets,
                    &tensors,
                    &batch.keys,
                    &nf,
                    &mut events,
                    &mut human,
                ));
            }
        };
        let epoch = sampler.epoch_at(step);
        pb.set_position(step);
        pb.set_message(format!(
            "ep {epoch:.2} G {:.3} D {:.3} L1 {:.4}",
            stats.loss_g, stats.loss_d, stats.l1
        ));
        if log_now {
            events.write(
                step,
                "train",
                &train_fields(&stats, epoch, opts.gr.lr(), &batch.keys),
            )?;
        }
        pb.suspend(|| {
            lung_log.observe(
                &cfg.lung_curriculum,
                step,
                stats.lung_weight,
                log_now,
                &mut events,
                &mut human,
            )
        })?;
        if is_due(step, cfg.log.val_every, total) {
            let t = Instant::now();
            last = validator.run(&nets, device)?;
            let mut fields = vec![("epoch", num(epoch))];
            for (k, v) in last.fields() {
                fields.push((k, v.map_or(Value::Null, num)));
            }
            let base_keys = [
                "baseline_mae_body",
                "baseline_mae_lung",
                "baseline_psnr_body",
                "baseline_psnr_lung",
                "baseline_ssim_body",
                "baseline_ssim_lung",
            ];
            for (k, (_, v)) in base_keys.into_iter().zip(validator.baseline.fields()) {
                fields.push((k, v.map_or(Value::Null, num)));
            }
            fields.push(("seconds", num(t.elapsed().as_secs_f64())));
            events.write(step, "val", &fields)?;
            let line = format!(
                "step {step}: validation {}",
                scores_line(&last, &validator.baseline)
            );
            human.line(&line);
            pb.suspend(|| tracing::info!("{line}"));
            let key = cfg.log.best_metric.key();
            if let Some(v) = last.get(key) {
                let better = best
                    .as_ref()
                    .is_none_or(|b| cfg.log.best_metric.improves(v, b.value));
                if better {
                    best = Some(Best {
                        metric: key.into(),
                        value: v,
                        step,
                    });
                    let state = TrainState::new(&cfg, step, epoch, best.clone());
                    checkpoint::save(&run, "best", &nets, &opts, &state)?;
                    events.write(
                        step,
                        "checkpoint",
                        &[("name", "best".into()), (key, num(v))],
                    )?;
                }
            }
            if let Err(e) = checkpoint_free_curves(&run) {
                tracing::warn!("could not draw curves.png: {e:#}");
            }
        }
        if is_due(step, cfg.log.sample_every, total) {
            validator.sample_grid(&nets, device, step, &run.sample(step))?;
        }
        if is_due(step, cfg.log.checkpoint_every, total) {
            let state = TrainState::new(&cfg, step, epoch, best.clone());
            checkpoint::save(&run, "latest", &nets, &opts, &state)?;
            events.write(step, "checkpoint", &[("name", "latest".into())])?;
            if step == total {
                checkpoint::save(&run, "final", &nets, &opts, &state)?;
                events.write(step, "checkpoint", &[("name", "final".into())])?;
            }
        }
        if cfg.debug.stop_after_step == Some(step) && step < total {
            human.line(&format!(
                "stopping after step {step} (debug.stop_after_step)"
            ));
            pb.abandon();
            return Ok(TrainOutcome {
                run: run.root().to_path_buf(),
                steps: step,
                started_at: start,
                last,
                baseline: validator.baseline,
                best,
                device: format!("{device:?}"),
                wall: t0.elapsed(),
            });
        }
    }
    pb.finish_and_clear();
    drop(loader);
    let wall = t0.elapsed();
    if start < total {
        events.write(
            total,
            "end",
            &[
                ("seconds", num(wall.as_secs_f64())),
                ("starved_steps", Value::from(starved)),
            ],
        )?;
        human.line(&format!(
            "finished {total} steps in {:.1} s ({starved} steps waited for data); final \
             validation {}",
            wall.as_secs_f64(),
            scores_line(&last, &validator.baseline)
        ));
    }
    Ok(TrainOutcome {
        run: run.root().to_path_buf(),
        steps: total,
        started_at: start,
        last,
        baseline: validator.baseline,
        best,
        device: format!("{device:?}"),
        wall,
    })
}

/// Whether a periodic event with interval `every` falls on `step` (the last step always).
fn is_due(step: u64, every: u64, total: u64) -> bool {
    step == total || (every > 0 && step.is_multiple_of(every))
}

fn progress_bar(cfg: &TrainConfig, start: u64, total: u64) -> ProgressBar {
    if !cfg.log.progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} step {pos}/{len} {per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_position(start);
    pb.reset_eta();
    pb
}

fn train_fields(
    s: &StepStats,
    epoch: f64,
    lr: f64,
    keys: &[SliceKey],
) -> Vec<(&'static str, Value)> {
    vec![
        ("epoch", num(epoch)),
        ("lr", num(lr)),
        ("loss_g", num(s.loss_g)),
        ("l1", num(s.l1)),
        ("ssim", num(s.ssim)),
        ("adv_g", num(s.adv_g)),
        ("smooth", num(s.smooth)),
        ("loss_d", num(s.loss_d)),
        ("d_real", num(s.d_real)),
        ("d_fake", num(s.d_fake)),
        ("flow_mean", num(s.flow_mean)),
        ("flow_max", num(s.flow_max)),
        ("grad_g", num(s.grad_g)),
        ("grad_r", num(s.grad_r)),
        ("grad_d", num(s.grad_d)),
        ("r1", s.r1.map_or(Value::Null, num)),
        ("perceptual", num(s.perceptual)),
        ("lung_weight", num(s.lung_weight)),
        (
            "batch_slices",
            Value::from(
                keys.iter()
                    .map(|k| format!("{}:{}", k.case, k.z))
                    .collect::<Vec<_>>(),
            ),
        ),
    ]
}

fn checkpoint_free_curves(run: &RunDir) -> anyhow::Result<()> {
    let events = crate::events::read_events(&run.metrics())?;
    draw_curves(&events, &run.curves())
}

/// One line: model vs NCCT baseline.
pub fn scores_line(s: &Scores, base: &Scores) -> String {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
    format!(
        "MAE body {} HU (NCCT {}), lung {} HU (NCCT {}); PSNR body {} dB (NCCT {}); SSIM body {} \
         (NCCT {}), lung {} (NCCT {})",
        f(s.mae_body, 1),
        f(base.mae_body, 1),
        f(s.mae_lung, 1),
        f(base.mae_lung, 1),
        f(s.psnr_body, 2),
        f(base.psnr_body, 2),
        f(s.ssim_body, 4),
        f(base.ssim_body, 4),
        f(s.ssim_lung, 4),
        f(base.ssim_lung, 4),
    )
}

/// The non-finite stop: snapshot (batch + weights) into `debug/step_N`, log, and the error to
/// return.
fn stop_non_finite(
    run: &RunDir,
    nets: &Nets,
    batch: &BatchTensors,
    keys: &[SliceKey],
    nf: &NonFinite,
    events: &mut EventLog,
    human: &mut HumanLog,
) -> anyhow::Error {
    let dir = run.debug_step(nf.step);
    let snapshot = (|| -> anyhow::Result<()> {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        volume::io::atomic::write_dir_atomic(&dir, |d| {
            let fill = || -> anyhow::Result<()> {
                let cpu = |t: &Tensor| t.to_device(tch::Device::Cpu).contiguous();
                let named = [
                    ("ncct", cpu(&batch.x)),
                    ("ctpa", cpu(&batch.y)),
                    ("lung", cpu(&batch.lung)),
                    ("body", cpu(&batch.body)),
                ];
                Tensor::write_safetensors(&named, d.join("batch.safetensors"))?;
                nets.save(d)?;
                let reason = serde_json::json!({
                    "step": nf.step,
                    "term": nf.term,
                    "value": nf.value.to_string(),
                    "slices": keys.iter().map(|k| [k.case, k.z]).collect::<Vec<_>>(),
                    "note": "weights are those the failing step started from",
                });
                std::fs::write(d.join("reason.json"), serde_json::to_vec_pretty(&reason)?)?;
                Ok(())
            };
            fill().map_err(|e| volume::VolumeError::invalid(format!("{e:#}")))
        })?;
        Ok(())
    })();
    let where_ = match &snapshot {
        Ok(()) => format!("debug snapshot (batch and weights) in {}", dir.display()),
        Err(e) => format!("the debug snapshot could not be written: {e:#}"),
    };
    let msg = format!("training stopped: {nf}; {where_}");
    human.line(&msg);
    let _ = events.write(
        nf.step,
        "error",
        &[
            ("term", Value::from(nf.term)),
            ("message", Value::from(msg.clone())),
        ],
    );
    anyhow::anyhow!(msg)
}

/// Writes `path` atomically with the given text (small helper for callers).
pub fn write_text_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    volume::io::atomic::write_atomic(path, |w| w.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
