//! The training loop, top to bottom: [`Trainer::set_up`] (configuration, run folder, data,
//! networks, the state to continue from), then for each step [`Trainer::step`] (batch, the
//! RegGAN step of [`crate::step`]) and [`Trainer::end_of_step`] (log, validate, sample,
//! checkpoint), then [`Trainer::finish`].
//!
//! A run is [`Start::New`] (a configuration, into a folder that holds no run yet) or
//! [`Start::Resume`] (the run's own `config.toml`, continued from `checkpoints/latest`, where
//! only process-local settings may change: device, threads, the progress bar).
//!
//! Data parallel ([`crate::distributed`], `RunSpec::dist`): rank 0 is the trainer described
//! here; the other ranks run the same loop on their shard of each batch but write nothing:
//! they take rank 0's resolved configuration and checkpoint choice through the store, read
//! the checkpoint from the shared run folder, receive rank 0's weights, and wait at a barrier
//! while rank 0 validates, draws samples and writes checkpoints.

use crate::checkpoint::{self, Best, TrainState};
use crate::config::{Layer, TestHooks, TrainConfig};
use crate::distributed::Distributed;
use crate::events::{num, EventLog, HumanLog};
use crate::nets::{Nets, Optimizers};
use crate::plot::draw_curves;
use crate::run_dir::{DatasetRecord, RunDir};
use crate::signals::StopFlag;
use crate::step::{train_step_synced, BatchTensors, NonFinite, StepError, StepStats, StepSync};
use crate::validate::{Scores, Validator};
use anyhow::{bail, Context};
use dataset::manifest::Split;
use dataset::sampler::{split_keys, Batch, Loader, Sampler, SamplerConfig, Shard, SliceKey};
use dataset::store::{PreparedDataset, WindowedStore};
use indicatif::{ProgressBar, ProgressStyle};
use model::guard::catch_torch;
use serde_json::Value;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// How a run starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new run of this configuration (the folder must not hold a run).
    New(Box<TrainConfig>),
    /// Continue the run in the folder from `checkpoints/latest` with its own configuration,
    /// exactly as if it had not stopped. `local` may set only the keys of
    /// [`LOCAL_KEYS`] (what this process runs on, not what is trained).
    Resume {
        local: Layer,
        hooks: TestHooks,
        /// Continue on a prepared dataset other than the one the run started on (its manifest
        /// differs); without it that is refused. The same dataset at another path (copied to
        /// node-local scratch) is always accepted, and logged.
        allow_other_data: bool,
    },
}

/// The keys a resumed process may change: where and how it runs, never what it trains.
pub const LOCAL_KEYS: [&str; 3] = ["device", "threads", "log.progress"];

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Prepared dataset folder.
    pub data: PathBuf,
    /// Run folder.
    pub run: PathBuf,
    pub start: Start,
    /// Stops the run after the current step, with a checkpoint ([`crate::signals`]).
    pub stop: StopFlag,
    /// Data parallel: this process's group ([`crate::distributed`]); `None`: one process.
    pub dist: Option<Arc<Distributed>>,
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
    /// The signal that stopped the run early (after writing `checkpoints/latest`), if one did.
    pub stopped: Option<&'static str>,
}

/// Trains as `spec` says (see [`Start`]).
pub fn train(spec: &RunSpec) -> anyhow::Result<TrainOutcome> {
    Trainer::set_up(spec)?.run()
}

/// A run in progress: everything the loop reads and writes.
pub struct Trainer {
    cfg: TrainConfig,
    run: RunDir,
    data: PathBuf,
    device: Device,
    human: HumanLog,
    events: EventLog,
    sampler: Arc<Sampler<WindowedStore>>,
    /// Rank 0's (the only one that validates).
    validator: Option<Validator>,
    nets: Nets,
    opts: Optimizers,
    /// The step this process starts after (0 or the checkpoint's) and the run's last step.
    start: u64,
    total: u64,
    best: Option<Best>,
    last: Scores,
    /// Steps that waited for their batch longer than `log.starve_warn_ms`.
    starved: u64,
    lung_log: crate::curriculum::LungWeightLog,
    /// Whether R's field was already reported as run away (warned once per process).
    runaway_warned: bool,
    pb: ProgressBar,
    t0: Instant,
    stop: StopFlag,
    /// The signal that stopped the run (this rank's, or a peer's vote).
    stopped_by: Option<&'static str>,
    dist: Option<Arc<Distributed>>,
    /// Time inside the training steps (for the share of the all-reduces).
    step_time: Duration,
    /// TensorBoard's event file (rank 0, `log.tensorboard`).
    tb: Option<crate::tensorboard::EventWriter>,
    /// Held for the whole run by rank 0: no second process trains in the folder.
    _lock: Option<util::lock::FolderLock>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("run", &self.run.root())
            .field("device", &self.device)
            .field("start", &self.start)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Opens the data, resolves the configuration and the run folder (written before step 1),
    /// builds the networks and restores the checkpoint of a resumed run.
    pub fn set_up(spec: &RunSpec) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let ds =
            Arc::new(PreparedDataset::open(&spec.data).with_context(|| {
                format!("opening the prepared dataset {}", spec.data.display())
            })?);
        let dist = spec.dist.clone();
        let leader = dist.as_ref().is_none_or(|d| d.is_leader());
        let (cfg, run, lock) = match &dist {
            Some(d) if !d.is_leader() => {
                let (cfg, run) = follow_run(spec, d)?;
                (cfg, run, None)
            }
            _ => {
                let (cfg, run, lock) = open_run(spec, &ds)?;
                if let Some(d) = &dist {
                    let sha = DatasetRecord::of(&spec.data)?.manifest_sha256;
                    d.share("dataset_sha256", Some(sha.as_bytes()))?;
                    d.share("config", Some(cfg.to_toml_string()?.as_bytes()))?;
                }
                (cfg, run, Some(lock))
            }
        };
        if cfg.threads > 0 {
            tch::set_num_threads(cfg.threads as i32);
        }
        if cfg.deterministic {
            make_deterministic()?;
        }
        let device = select_device(&cfg, dist.as_deref())?;
        let mut human = match leader {
            true => HumanLog::open(&run.log())?,
            false => HumanLog::disabled(),
        };
        let shard = dist.as_ref().map_or(Shard::default(), |d| Shard {
            rank: d.rank(),
            world: d.world_size(),
        });
        let sampler = training_sampler(&cfg, &ds, &spec.data, shard)?;
        let validator = match leader {
            true => {
                let mut v = Validator::load(
                    &ds,
                    cfg.window(),
                    cfg.size_multiple(),
                    cfg.log.val_max_cases,
                    cfg.log.registered_validation,
                    &cfg.contrast,
                )?;
                v.tiling = cfg.tiling()?;
                v.tta = cfg.tta()?;
                Some(v)
            }
            false => None,
        };
        let mut nets = catch_torch("building the networks", || Ok(Nets::new(&cfg, device)))?;
        if !leader {
            // only rank 0 validates, predicts and checkpoints: its EMA is the one that counts
            nets.ema = None;
        }
        // The perceptual loss's frozen VGG (checked against the recorded SHA-256) and the log
        // lines describing the image loss terms.
        let image_lines = crate::image_losses::attach(&mut nets, &cfg, device)?;
        let mut opts = nets.optimizers(&cfg)?;
        let total = cfg.schedule.steps;
        let resume = matches!(spec.start, Start::Resume { .. });
        let (start, best, events) = restore_or_begin(
            &run,
            &mut nets,
            &mut opts,
            &mut human,
            resume,
            dist.as_deref(),
        )?;
        if let Some(d) = &dist {
            d.broadcast_from_leader(&nets.variables_in_order(), "rank 0's weights")?;
        }
        let tb = match leader && cfg.log.tensorboard {
            true => Some(crate::tensorboard::EventWriter::create(
                run.root(),
                resume.then_some(start + 1),
            )?),
            false => None,
        };
        let mut trainer = Self {
            // the other ranks' bars would only repeat rank 0's
            pb: match leader {
                true => progress_bar(&cfg, total),
                false => ProgressBar::hidden(),
            },
            cfg,
            run,
            data: spec.data.clone(),
            device,
            human,
            events,
            sampler,
            validator,
            nets,
            opts,
            start,
            total,
            best,
            last: Scores::default(),
            starved: 0,
            lung_log: Default::default(),
            runaway_warned: false,
            t0,
            stop: spec.stop.clone(),
            stopped_by: None,
            dist,
            step_time: Duration::ZERO,
            tb,
            _lock: lock,
        };
        trainer.log_start(&image_lines)?;
        Ok(trainer)
    }

    /// The start-up line (device, data, model, steps) and the `start` event of a new run.
    fn log_start(&mut self, image_lines: &[String]) -> anyhow::Result<()> {
        let (cfg, nets) = (&self.cfg, &self.nets);
        let summary = model::summary::NetworkCount::of(&nets.gr_store);
        let (ranks, global_batch) = match &self.dist {
            Some(d) => (
                format!(" | {}", d.describe()),
                format!(
                    " (global batch {} over {} ranks)",
                    cfg.data.batch_size * d.world_size(),
                    d.world_size()
                ),
            ),
            None => (String::new(), String::new()),
        };
        let line = format!(
            "run {} | device {:?}{ranks} | data {} ({} training slices, {} validation cases) | \
             preset {} | registration {} | steps {}..{} | batch {} x {}px{global_batch} | G+R \
             variables {} ({} params)",
            self.run.root().display(),
            self.device,
            self.data.display(),
            self.sampler.slices_per_epoch(),
            self.validator.as_ref().map_or(0, |v| v.cases.len()),
            cfg.preset,
            match (cfg.registration, cfg.optim.registration_lr_factor) {
                (false, _) => "off".to_string(),
                (true, 1.0) => "on".to_string(),
                (true, f) => format!("on at {f} x G's lr"),
            },
            self.start + 1,
            self.total,
            cfg.data.batch_size,
            cfg.data.crop_size,
            nets.gr_store.len(),
            summary.total,
        );
        for line in std::iter::once(&line).chain(image_lines) {
            self.human.line(line);
            tracing::info!("{line}");
        }
        if self.start == 0 {
            let fields = [
                ("device", Value::from(format!("{:?}", self.device))),
                ("train_slices", Value::from(self.sampler.slices_per_epoch())),
                (
                    "val_cases",
                    Value::from(self.validator.as_ref().map_or(0, |v| v.cases.len())),
                ),
                ("total_steps", Value::from(self.total)),
                ("world_size", Value::from(self.world_size())),
            ];
            self.events.write(0, "start", &fields)?;
            if let Some(tb) = &mut self.tb {
                let config = self.cfg.to_toml_string()?;
                tb.text(0, "config", &format!("```toml\n{config}\n```"))?;
            }
        }
        if self.start >= self.total {
            self.human.line(&format!(
                "nothing to do: the run already completed {} of {} steps",
                self.start, self.total
            ));
        }
        Ok(())
    }

    /// Runs the remaining steps, then [`Self::finish`].
    pub fn run(mut self) -> anyhow::Result<TrainOutcome> {
        let (start, total) = (self.start, self.total);
        let mut loader = Loader::spawn(
            Arc::clone(&self.sampler),
            start..total,
            self.cfg.data.loader_threads,
            self.cfg.data.prefetch,
        )?;
        self.pb.set_position(start);
        self.pb.reset_eta();
        for step in start + 1..=total {
            let batch = self.next_batch(&mut loader, step)?;
            let stats = self.step(&batch, step)?;
            if let ControlFlow::Break(()) = self.end_of_step(step, &stats, &batch.keys)? {
                self.pb.abandon();
                self.log_communication(step - start);
                return Ok(self.outcome(step));
            }
        }
        drop(loader);
        self.log_communication(total.saturating_sub(start));
        self.finish()
    }

    /// The batch of `step` from the loader, warning when the loader is slower than training.
    fn next_batch(&mut self, loader: &mut Loader, step: u64) -> anyhow::Result<Batch> {
        let batch = loader
            .next_batch()
            .ok_or_else(|| anyhow::anyhow!("the data loader ended early at step {step}"))?
            .with_context(|| format!("loading the batch of step {step}"))?;
        let warn_after = Duration::from_millis(self.cfg.log.starve_warn_ms);
        // The first batch always waits for the loader to start.
        if step > self.start + 1 && loader.last_wait() > warn_after {
            self.starved += 1;
            if self.starved == 1 || self.starved.is_multiple_of(100) {
                tracing::warn!(
                    "step {step} waited {:.0} ms for its batch ({} starved steps so far): the \
                     data loader is slower than training; raise data.loader_threads",
                    loader.last_wait().as_secs_f64() * 1e3,
                    self.starved
                );
            }
        }
        Ok(batch)
    }

    /// The RegGAN step on `batch`; a non-finite loss stops the run with a debug snapshot.
    fn step(&mut self, batch: &Batch, step: u64) -> anyhow::Result<StepStats> {
        let tensors = BatchTensors::from_batch(batch, self.device, &self.cfg)?;
        let (cfg, events, human) = (&self.cfg, &mut self.events, &mut self.human);
        self.pb.suspend(|| {
            crate::phases::log_switch(&cfg.progressive, step, self.total, events, human)
        })?;
        let lr_factor = cfg.schedule.lr_factor(step);
        let log_now = is_due(step, cfg.log.every, self.total);
        let (nets, opts) = (&mut self.nets, &mut self.opts);
        let sync = self.dist.as_deref().map(|dist| StepSync {
            dist,
            // any request is a vote, even one without a signal number
            stop_vote: self.stop.requested_number().map_or(0, |n| n.max(1)),
        });
        let t = Instant::now();
        let result = catch_torch(&format!("step {step}"), || {
            Ok(train_step_synced(
                nets, opts, &tensors, cfg, step, lr_factor, log_now, sync,
            ))
        })?;
        self.step_time += t.elapsed();
        if let (Ok(_), Some(ema)) = (&result, &self.nets.ema) {
            // the EMA follows every completed step (crate::config::EmaConfig)
            ema.update(&self.nets.gr_store);
        }
        result.map_err(|e| {
            self.pb.abandon();
            match e {
                StepError::Peer(e) => e.context(format!("step {step}")),
                StepError::NonFinite(nf) if !self.is_leader() => anyhow::anyhow!(
                    "training stopped: {nf} (on every rank; rank 0 writes the debug snapshot)"
                ),
                StepError::NonFinite(nf) => stop_non_finite(
                    &self.run,
                    &self.nets,
                    &tensors,
                    &batch.keys,
                    &nf,
                    (&mut self.events, &mut self.human),
                ),
            }
        })
    }

    /// Rank 0, or the only process: the one that writes the run folder.
    fn is_leader(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.is_leader())
    }

    fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, |d| d.world_size())
    }

    /// What follows a step: its log, validation, samples and checkpoints when due; `Break`
    /// when a test hook stops the run here.
    fn end_of_step(
        &mut self,
        step: u64,
        stats: &StepStats,
        keys: &[SliceKey],
    ) -> anyhow::Result<ControlFlow<()>> {
        let (every, total) = (&self.cfg.log, self.total);
        let epoch = self.sampler.epoch_at(step);
        self.pb.set_position(step);
        self.pb.set_message(format!(
            "ep {epoch:.2} G {:.3} D {:.3} L1 {:.4}",
            stats.loss_g, stats.loss_d, stats.l1
        ));
        let log_now = is_due(step, every.every, total);
        self.warn_runaway_field(step, stats.flow_max);
        if log_now {
            let fields = train_fields(stats, epoch, self.opts.gr.lr(), keys);
            self.events.write(step, "train", &fields)?;
            if let Some(tb) = &mut self.tb {
                let mut scalars: Vec<(String, f64)> = fields
                    .iter()
                    .filter_map(|(k, v)| Some((format!("train/{k}"), v.as_f64()?)))
                    .collect();
                scalars.push(("train/lr_d".into(), self.opts.d.lr()));
                tb.scalars(step, &scalars)?;
            }
        }
        let (cfg, events, human) = (&self.cfg, &mut self.events, &mut self.human);
        let lung_log = &mut self.lung_log;
        self.pb.suspend(|| {
            lung_log.observe(
                &cfg.lung_curriculum,
                step,
                stats.lung_weight,
                log_now,
                events,
                human,
            )
        })?;
        let log = &self.cfg.log;
        let validate_now = is_due(step, log.val_every, total);
        let sample_now = is_due(step, log.sample_every, total);
        let checkpoint_now = is_due(step, log.checkpoint_every, total);
        if self.is_leader() {
            if validate_now {
                self.validate(step, epoch)?;
            }
            if let Some(validator) = self.validator.as_ref().filter(|_| sample_now) {
                let path = self.run.sample(step);
                let (nets, device) = (&self.nets, self.device);
                catch_torch(&format!("the sample grid of step {step}"), || {
                    validator.sample_grid(nets, device, step, &path)
                })?;
                if let Some(tb) = &mut self.tb {
                    let png = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    tb.png(step, "samples", png)?;
                }
            }
            if checkpoint_now {
                self.save_latest(step, epoch)?;
            }
        }
        if let Some(d) = self
            .dist
            .as_ref()
            .filter(|_| validate_now || checkpoint_now || sample_now)
        {
            d.barrier(&format!(
                "rank 0's validation, samples and checkpoints of step {step}"
            ))?;
        }
        if self
            .cfg
            .hooks
            .weight_digests_from_step
            .is_some_and(|from| step >= from)
        {
            let digest = weights_digest(&self.nets);
            tracing::info!("weights digest after step {step}: {digest:016x}");
        }
        if self.cfg.hooks.stop_after_step == Some(step) && step < total {
            self.human
                .line(&format!("stopping after step {step} (test hook)"));
            return Ok(ControlFlow::Break(()));
        }
        let stop = match &self.dist {
            // every rank decides on the same all-reduced votes
            Some(_) => {
                (stats.stop_votes > 0.0).then(|| self.stop.requested().unwrap_or("a peer's signal"))
            }
            None => self.stop.requested(),
        };
        if let Some(signal) = stop.filter(|_| step < total) {
            self.stopped_by = Some(signal);
            if self.is_leader() {
                self.stop_on_signal(step, epoch, signal)?;
            }
            if let Some(d) = &self.dist {
                // nobody exits (which makes torchrun stop the others) before the checkpoint
                d.barrier(&format!(
                    "rank 0's checkpoint of step {step} before stopping"
                ))?;
            }
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Warns once when R's in-plane field reaches further than a whole training image: it
    /// samples G's output beyond the image, where border padding gives no gradient to bring
    /// it back, so R has run away (the cure: `model.registration.max_displacement_px`).
    fn warn_runaway_field(&mut self, step: u64, flow_max: f64) {
        let crop = self.cfg.data.crop_size as f64;
        if self.runaway_warned || flow_max.is_nan() || flow_max <= crop {
            return;
        }
        self.runaway_warned = true;
        let bound = self.cfg.model.registration.max_displacement_px;
        let line = format!(
            "step {step}: R's displacement field reaches {flow_max:.0} px, more than the {crop:.0} \
             px training image: it has run away (beyond the image no gradient brings it back) \
             and the reconstruction no longer trains G; bound it with \
             model.registration.max_displacement_px (now {bound}; 0 = no bound), e.g. a few \
             times the largest motion left after the rigid pre-alignment"
        );
        self.human.line(&line);
        self.pb.suspend(|| tracing::warn!("{line}"));
    }

    /// A signal asked to stop: `latest` is written (unless this step just wrote it) and the
    /// stop is logged, so `--resume` continues from this step.
    fn stop_on_signal(&mut self, step: u64, epoch: f64, signal: &str) -> anyhow::Result<()> {
        if !is_due(step, self.cfg.log.checkpoint_every, self.total) {
            self.save_latest(step, epoch)?;
        }
        let fields = [("signal", Value::from(signal))];
        self.events.write(step, "stopped", &fields)?;
        let line = format!(
            "{signal}: stopped after step {step} with checkpoints/latest written; continue with \
             --resume"
        );
        self.human.line(&line);
        self.pb.suspend(|| tracing::warn!("{line}"));
        Ok(())
    }

    /// Validates on whole volumes, logs the scores beside the baseline, keeps `best`, and
    /// redraws the curves.
    fn validate(&mut self, step: u64, epoch: f64) -> anyhow::Result<()> {
        let t = Instant::now();
        let Some(validator) = self.validator.as_ref() else {
            return Ok(());
        };
        let (nets, device, baseline) = (&self.nets, self.device, validator.baseline);
        self.last = catch_torch(&format!("validation at step {step}"), || {
            validator.run(nets, device)
        })?;
        let mut fields = vec![("epoch", num(epoch))];
        for (k, v) in self.last.fields() {
            fields.push((k, v.map_or(Value::Null, num)));
        }
        for (k, (_, v)) in BASELINE_KEYS.into_iter().zip(baseline.fields()) {
            fields.push((k, v.map_or(Value::Null, num)));
        }
        fields.push(("seconds", num(t.elapsed().as_secs_f64())));
        self.events.write(step, "val", &fields)?;
        if let Some(tb) = &mut self.tb {
            let tagged = |prefix: &str, s: &Scores| {
                s.fields()
                    .into_iter()
                    .filter_map(|(k, v)| Some((format!("{prefix}/{k}"), v?)))
                    .collect::<Vec<_>>()
            };
            let mut scalars = tagged("val", &self.last);
            scalars.extend(tagged("val_ncct", &baseline));
            tb.scalars(step, &scalars)?;
        }
        let line = format!(
            "step {step}: validation {}",
            scores_line(&self.last, &baseline)
        );
        self.human.line(&line);
        self.pb.suspend(|| tracing::info!("{line}"));
        self.keep_best(step, epoch)?;
        if let Err(e) = checkpoint_free_curves(&self.run) {
            tracing::warn!("could not draw curves.png: {e:#}");
        }
        Ok(())
    }

    /// Saves `best` when the last validation beats it.
    fn keep_best(&mut self, step: u64, epoch: f64) -> anyhow::Result<()> {
        let metric = self.cfg.log.best_metric;
        let Some(value) = self.last.get(metric.key()) else {
            return Ok(());
        };
        let better = self
            .best
            .as_ref()
            .is_none_or(|b| metric.improves(value, b.value));
        if !better {
            return Ok(());
        }
        self.best = Some(Best {
            metric: metric.key().into(),
            value,
            step,
        });
        let state = self.state(step, epoch);
        checkpoint::save(&self.run, "best", &self.nets, &self.opts, &state)?;
        let fields = [("name", "best".into()), (metric.key(), num(value))];
        self.events.write(step, "checkpoint", &fields)
    }

    /// The checkpoint's `state.json`.
    fn state(&self, step: u64, epoch: f64) -> TrainState {
        TrainState {
            world_size: self.world_size(),
            ..TrainState::new(&self.cfg, step, epoch, self.best.clone())
        }
    }

    /// Saves `latest` (and `final` at the last step).
    fn save_latest(&mut self, step: u64, epoch: f64) -> anyhow::Result<()> {
        let state = self.state(step, epoch);
        let names: &[&str] = match step == self.total {
            true => &["latest", "final"],
            false => &["latest"],
        };
        for name in names {
            checkpoint::save(&self.run, name, &self.nets, &self.opts, &state)?;
            self.events
                .write(step, "checkpoint", &[("name", (*name).into())])?;
        }
        Ok(())
    }

    /// The `end` event and line, and the outcome.
    fn finish(mut self) -> anyhow::Result<TrainOutcome> {
        self.pb.finish_and_clear();
        let (start, total) = (self.start, self.total);
        let wall = self.t0.elapsed();
        if start < total {
            let fields = [
                ("seconds", num(wall.as_secs_f64())),
                ("starved_steps", Value::from(self.starved)),
            ];
            self.events.write(total, "end", &fields)?;
            self.human.line(&format!(
                "finished {total} steps in {:.1} s ({} steps waited for data); final \
                 validation {}",
                wall.as_secs_f64(),
                self.starved,
                scores_line(&self.last, &self.baseline())
            ));
        }
        Ok(self.outcome(total))
    }

    fn outcome(&self, steps: u64) -> TrainOutcome {
        TrainOutcome {
            run: self.run.root().to_path_buf(),
            steps,
            started_at: self.start,
            last: self.last,
            baseline: self.baseline(),
            best: self.best.clone(),
            device: format!("{:?}", self.device),
            wall: self.t0.elapsed(),
            stopped: (steps < self.total).then_some(self.stopped_by).flatten(),
        }
    }

    /// The NCCT-as-prediction scores (rank 0's; default elsewhere).
    fn baseline(&self) -> Scores {
        self.validator
            .as_ref()
            .map_or_else(Scores::default, |v| v.baseline)
    }

    /// The all-reduces' share of the training steps, logged at the end of a data-parallel run.
    fn log_communication(&mut self, steps: u64) {
        let Some(d) = &self.dist else {
            return;
        };
        let comm = d.step_comm_time().as_secs_f64();
        let line = format!(
            "{}: the all-reduces took {:.1} ms per step, {:.1}% of the training steps' time \
             ({steps} steps)",
            d.describe(),
            comm * 1e3 / steps.max(1) as f64,
            100.0 * comm / self.step_time.as_secs_f64().max(1e-9)
        );
        self.human.line(&line);
        tracing::info!("{line}");
    }
}

/// A hash of the bit patterns of every weight and buffer (the `weight_digests_from_step`
/// test hook): equal digests mean bitwise equal networks.
fn weights_digest(nets: &Nets) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    for t in nets.variables_in_order() {
        let flat = t
            .detach()
            .to_device(Device::Cpu)
            .to_kind(tch::Kind::Float)
            .reshape([-1]);
        for v in Vec::<f32>::try_from(&flat).unwrap_or_default() {
            h.write_u32(v.to_bits());
        }
    }
    h.finish()
}

/// `deterministic = true`: see [`TrainConfig::deterministic`]. cuBLAS reads its workspace
/// setting when its first handle is made, so this runs before any network exists.
fn make_deterministic() -> anyhow::Result<()> {
    if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        // set during start-up, before the loader threads and libtorch's CUDA use
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    torchext::set_deterministic(true, true)?;
    tracing::info!(
        "deterministic: libtorch's deterministic algorithms and cuDNN's deterministic mode are \
         on; ops without a deterministic CUDA kernel warn and run anyway"
    );
    Ok(())
}

/// A resumed run's weights, moments, step, best score and metrics from `checkpoints/latest`;
/// a new run's step 0 and empty metrics.
///
/// Data parallel: rank 0 chooses the checkpoint and tells the others, which read it from the
/// shared run folder and write no log.
fn restore_or_begin(
    run: &RunDir,
    nets: &mut Nets,
    opts: &mut Optimizers,
    human: &mut HumanLog,
    resume: bool,
    dist: Option<&Distributed>,
) -> anyhow::Result<(u64, Option<Best>, EventLog)> {
    let leader = dist.is_none_or(Distributed::is_leader);
    if !resume {
        let events = match leader {
            true => EventLog::open(&run.metrics())?,
            false => EventLog::disabled(),
        };
        return Ok((0, None, events));
    }
    // rank 0 chooses; the others get the checkpoint's name, relative to their own view of the
    // run folder (nodes may mount it at different paths)
    let dir = match dist {
        Some(d) if !d.is_leader() => run.checkpoint(
            &String::from_utf8(d.share("resume_from", None)?)
                .context("rank 0's checkpoint name is not UTF-8")?,
        ),
        _ => {
            let dir = checkpoint::resume_dir(run)?;
            if let Some(d) = dist {
                let name = dir.file_name().and_then(|n| n.to_str()).with_context(|| {
                    format!("{}: a checkpoint needs a UTF-8 name", dir.display())
                })?;
                d.share("resume_from", Some(name.as_bytes()))?;
            }
            dir
        }
    };
    let state = match checkpoint::restore(&dir, nets, opts) {
        Err(e) if !leader => {
            return Err(e.context(
                "the run folder must be on storage every rank can read (a shared file system)",
            ))
        }
        restored => restored?,
    };
    if !leader {
        return Ok((state.step, state.best, EventLog::disabled()));
    }
    let mut events = EventLog::open_resumed(&run.metrics(), state.step)?;
    let from = Value::from(dir.display().to_string());
    events.write(state.step, "resume", &[("from", from)])?;
    human.line(&format!(
        "resumed from {} at step {}",
        dir.display(),
        state.step
    ));
    let world = dist.map_or(1, Distributed::world_size);
    if state.world_size != world {
        let line = format!(
            "the run trained on {} process(es) until step {}, now on {world}: it continues from \
             the same weights, moments and step with the new world's data order (the global \
             batch is data.batch_size x {world})",
            state.world_size, state.step
        );
        human.line(&line);
        tracing::warn!("{line}");
    }
    Ok((state.step, state.best, events))
}

/// A data-parallel rank other than 0: rank 0's resolved configuration (through the store),
/// with this process's test hooks (and, resuming, its process-local keys), and the run folder
/// rank 0 writes.
fn follow_run(spec: &RunSpec, dist: &Distributed) -> anyhow::Result<(TrainConfig, RunDir)> {
    // the same prepared dataset as rank 0 (a node-local copy is fine; other data is not)
    let theirs = String::from_utf8(dist.share("dataset_sha256", None)?)
        .context("rank 0's dataset checksum is not UTF-8")?;
    let ours = DatasetRecord::of(&spec.data)?.manifest_sha256;
    if ours != theirs {
        bail!(
            "rank {}: {} is not the prepared dataset rank 0 trains on (manifest SHA-256 {} here, \
             {} on rank 0): give every rank the same --data (a copy is fine)",
            dist.rank(),
            spec.data.display(),
            &ours[..12.min(ours.len())],
            &theirs[..12.min(theirs.len())]
        );
    }
    let text = String::from_utf8(dist.share("config", None)?)
        .context("rank 0's configuration is not UTF-8")?;
    let mut layers = vec![toml::from_str(&text).context("rank 0's configuration")?];
    let hooks = match &spec.start {
        Start::New(cfg) => cfg.hooks.clone(),
        Start::Resume { local, hooks, .. } => {
            layers.push(local.0.clone());
            hooks.clone()
        }
    };
    let mut cfg = TrainConfig::from_layers(layers, "default").context("rank 0's configuration")?;
    cfg.validate().context("rank 0's configuration")?;
    cfg.hooks = hooks.with_env()?;
    Ok((cfg, RunDir::shared(&spec.run)))
}

/// The configured device; data parallel on CUDA: the GPU of this process's local rank.
fn select_device(cfg: &TrainConfig, dist: Option<&Distributed>) -> anyhow::Result<Device> {
    let device = model::device::select(&cfg.device)?;
    match (device, dist) {
        (Device::Cuda(_), Some(d)) => {
            tracing::warn!(
                "data parallel on CUDA runs on the Gloo backend in this build (gradients staged \
                 through host memory); NCCL is not built in yet"
            );
            // one GPU per process: the local rank's, or the only one this process sees (SLURM's
            // --gpus-per-task, a per-rank CUDA_VISIBLE_DEVICES)
            let visible = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            let index = match (visible, d.local_rank()) {
                (1, _) => 0,
                (n, local) if local < n => local,
                (n, local) => bail!(
                    "local rank {local} (LOCAL_RANK / SLURM_LOCALID) has no GPU: this process \
                     sees {n} (CUDA_VISIBLE_DEVICES); start at most {n} processes per machine or \
                     give each its own GPU"
                ),
            };
            Ok(Device::Cuda(index))
        }
        _ => Ok(device),
    }
}

/// The run's configuration and folder: a new run's resolved config written into a new folder,
/// or a resumed run's own config with the process-local keys of `local` on top.
fn open_run(
    spec: &RunSpec,
    ds: &PreparedDataset,
) -> anyhow::Result<(TrainConfig, RunDir, util::lock::FolderLock)> {
    match &spec.start {
        Start::New(cfg) => {
            let mut cfg = (**cfg).clone();
            let probe = split_keys(ds, Split::Train, cfg.data.min_body_fraction)?;
            let world = spec.dist.as_ref().map_or(1, |d| d.world_size());
            cfg.resolve(ds.window(), probe.len(), world)?;
            check_crop_fits(&cfg, ds, &spec.data)?;
            cfg.hooks = cfg.hooks.clone().with_env()?;
            // everything that can fail on the input comes before the run folder exists
            let record = DatasetRecord::of(&spec.data)?;
            let run = RunDir::create_new(&spec.run)?;
            let lock = run.lock()?;
            write_text_atomic(
                &run.dataset_record(),
                &serde_json::to_string_pretty(&record)?,
            )?;
            write_text_atomic(&run.config(), &cfg.to_toml_string()?)?;
            Ok((cfg, run, lock))
        }
        Start::Resume {
            local,
            hooks,
            allow_other_data,
        } => {
            let refused: Vec<String> = local
                .keys()
                .into_iter()
                .filter(|k| !LOCAL_KEYS.contains(&k.as_str()))
                .collect();
            if !refused.is_empty() {
                bail!(
                    "a resumed run trains with its own config.toml; only {} may change, not {}",
                    LOCAL_KEYS.join(", "),
                    refused.join(", ")
                );
            }
            let run = RunDir::open_existing(&spec.run)?;
            let lock = run.lock()?;
            run.remove_temporaries()?;
            check_same_data(&run, &spec.data, *allow_other_data)?;
            let mut own: toml::Table = toml::from_str(&read_text(&run.config())?)
                .with_context(|| format!("config {}", run.config().display()))?;
            resume_keeps_recorded_inference(&mut own, &run.config());
            let mut layers = vec![own];
            layers.push(local.0.clone());
            let mut cfg = TrainConfig::from_layers(layers, "default")
                .with_context(|| format!("config of {}", run.root().display()))?;
            cfg.validate()
                .with_context(|| format!("config of {}", run.root().display()))?;
            cfg.hooks = hooks.clone().with_env()?;
            Ok((cfg, run, lock))
        }
    }
}

/// A run started before a key of `[inference]` existed validated without it, and keeps doing
/// so, so its validation scores (and `best`) stay comparable across the resume: without
/// `[inference]` it validated on whole slices, without `tta` in one pass.
fn resume_keeps_recorded_inference(own: &mut toml::Table, config: &Path) {
    let inference = own.entry("inference").or_insert_with(|| {
        tracing::info!(
            "{} records no [inference] (started before tiled validation): it keeps \
                 validating, and its checkpoints predicting, on whole slices",
            config.display()
        );
        toml::Table::from_iter([("tile".to_owned(), "whole".into())]).into()
    });
    if let Some(table) = inference.as_table_mut() {
        table.entry("tta").or_insert_with(|| {
            tracing::info!(
                "{} records no [inference] tta (started before validation mirrored): it keeps \
                 validating, and its checkpoints predicting, without test-time augmentation",
                config.display()
            );
            "none".into()
        });
    }
}

/// A resume continues on the data the run started on: the same manifest (at any path), or,
/// when `allow_other` says so, another one (logged).
fn check_same_data(run: &RunDir, data: &Path, allow_other: bool) -> anyhow::Result<()> {
    let now = DatasetRecord::of(data)?;
    let Some(then) = run.read_dataset_record()? else {
        tracing::warn!(
            "{}: the run records no dataset (written before dataset.json existed); cannot check \
             that {} is the data it started on",
            run.root().display(),
            data.display()
        );
        return Ok(());
    };
    if then.manifest_sha256 != now.manifest_sha256 {
        if !allow_other {
            bail!(
                "{} is not the prepared dataset this run started on ({}, manifest SHA-256 {}; \
                 this one has {}): pass --data {} or, to continue on other data on purpose, \
                 --allow-other-data",
                data.display(),
                then.path.display(),
                &then.manifest_sha256[..12],
                &now.manifest_sha256[..12],
                then.path.display()
            );
        }
        tracing::warn!(
            "continuing on other data on purpose: {} (the run started on {})",
            data.display(),
            then.path.display()
        );
    } else if then.path != now.path {
        tracing::info!(
            "the run's dataset is at another path now ({} -> {}); same manifest",
            then.path.display(),
            now.path.display()
        );
    }
    Ok(())
}

/// `data.crop_size` must fit in the training slices (a larger crop would train mostly on
/// padding): checked before the run folder exists.
fn check_crop_fits(cfg: &TrainConfig, ds: &PreparedDataset, data: &Path) -> anyhow::Result<()> {
    let largest = ds
        .manifest()
        .cases
        .iter()
        .filter(|c| c.split == Split::Train)
        .map(|c| {
            let [_, ny, nx] = c.meta.grid.shape_zyx;
            ny.min(nx)
        })
        .max()
        .unwrap_or(0);
    if cfg.data.crop_size > largest {
        bail!(
            "data.crop_size = {} is larger than every training slice of {} (the largest is \
             {largest} px on its short side): use at most {largest}",
            cfg.data.crop_size,
            data.display()
        );
    }
    Ok(())
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The sampler over the training split's slices, normalised with the run's window.
fn training_sampler(
    cfg: &TrainConfig,
    ds: &Arc<PreparedDataset>,
    data: &Path,
    shard: Shard,
) -> anyhow::Result<Arc<Sampler<WindowedStore>>> {
    let keys = split_keys(ds, Split::Train, cfg.data.min_body_fraction)?;
    if keys.is_empty() {
        bail!(
            "{}: no training slices (no case in the train split has a slice with at least {} of \
             body pixels)",
            data.display(),
            cfg.data.min_body_fraction
        );
    }
    let source = Arc::new(WindowedStore::new(Arc::clone(ds), cfg.window()));
    let sampler = Sampler::new(
        source,
        keys,
        SamplerConfig {
            batch_size: cfg.data.batch_size,
            crop_size: cfg.data.crop_size,
            fill: -1.0,
            seed: cfg.seed,
            augment: cfg.data.augment.clone(),
        },
    )?
    .with_shard(shard)?
    .with_context(crate::step::sampler_context(cfg));
    Ok(Arc::new(sampler))
}

/// The NCCT baseline's keys in `val` events, in [`Scores::fields`] order.
const BASELINE_KEYS: [&str; 13] = [
    "baseline_mae_body",
    "baseline_mae_lung",
    "baseline_psnr_body",
    "baseline_psnr_lung",
    "baseline_ssim_body",
    "baseline_ssim_lung",
    "baseline_mae_body_reg",
    "baseline_mae_lung_reg",
    "baseline_psnr_body_reg",
    "baseline_psnr_lung_reg",
    "baseline_ssim_body_reg",
    "baseline_ssim_lung_reg",
    "baseline_mae_contrast",
];

/// Whether a periodic event with interval `every` falls on `step` (the last step always).
fn is_due(step: u64, every: u64, total: u64) -> bool {
    step == total || (every > 0 && step.is_multiple_of(every))
}

fn progress_bar(cfg: &TrainConfig, total: u64) -> ProgressBar {
    if !cfg.log.progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} step {pos}/{len} {per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
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
        ("flow_z_mean", num(s.flow_z_mean)),
        ("grad_g", num(s.grad_g)),
        ("grad_r", num(s.grad_r)),
        ("grad_d", num(s.grad_d)),
        ("r1", s.r1.map_or(Value::Null, num)),
        ("perceptual", num(s.perceptual)),
        ("identity", num(s.identity)),
        ("identity_drift", num(s.identity_drift)),
        ("contrast_mean", num(s.contrast_mean)),
        ("contrast_peak", num(s.contrast_peak)),
        ("contrast_quantile", num(s.contrast_quantile)),
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
    let mut line = format!(
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
    );
    if s.mae_contrast.is_some() {
        line.push_str(&format!(
            "; contrast region MAE {} HU (NCCT {})",
            f(s.mae_contrast, 1),
            f(base.mae_contrast, 1),
        ));
    }
    if s.mae_body_reg.is_some() {
        line.push_str(&format!(
            "; against the registered CTPA: MAE body {} HU (NCCT {}), lung {} HU (NCCT {})",
            f(s.mae_body_reg, 1),
            f(base.mae_body_reg, 1),
            f(s.mae_lung_reg, 1),
            f(base.mae_lung_reg, 1),
        ));
    }
    line
}

/// The non-finite stop: snapshot (batch + weights) into `debug/step_N`, log, and the error to
/// return.
fn stop_non_finite(
    run: &RunDir,
    nets: &Nets,
    batch: &BatchTensors,
    keys: &[SliceKey],
    nf: &NonFinite,
    (events, human): (&mut EventLog, &mut HumanLog),
) -> anyhow::Error {
    let dir = run.debug_step(nf.step);
    let snapshot = (|| -> anyhow::Result<()> {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        util::atomic::write_dir_atomic(&dir, |d| -> anyhow::Result<()> {
            {
                let cpu = |t: &Tensor| t.to_device(tch::Device::Cpu).contiguous();
                let mut named = vec![
                    ("ncct", cpu(batch.g_input())),
                    ("ctpa", cpu(&batch.y)),
                    ("lung", cpu(&batch.lung)),
                    ("body", cpu(&batch.body)),
                ];
                // R across slices: G's inputs below, at and above, along the batch
                if let Some(p) = &batch.planes {
                    named.push(("planes", cpu(p)));
                }
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
            }
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
    util::atomic::write_atomic(path, |w| w.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
