//! The training loop, top to bottom: [`Trainer::set_up`] (configuration, run folder, data,
//! networks, the state to continue from), then for each step [`Trainer::step`] (batch, the
//! RegGAN step of [`crate::step`]) and [`Trainer::end_of_step`] (log, validate, sample,
//! checkpoint), then [`Trainer::finish`].
//!
//! A run is [`Start::New`] (a configuration, into a folder that holds no run yet) or
//! [`Start::Resume`] (the run's own `config.toml`, continued from `checkpoints/latest`, where
//! only process-local settings may change: device, threads, the progress bar).

use crate::checkpoint::{self, Best, TrainState};
use crate::config::{Layer, TestHooks, TrainConfig};
use crate::events::{num, EventLog, HumanLog};
use crate::nets::{Nets, Optimizers};
use crate::plot::draw_curves;
use crate::run_dir::{DatasetRecord, RunDir};
use crate::signals::StopFlag;
use crate::step::{train_step, BatchTensors, NonFinite, StepStats};
use crate::validate::{Scores, Validator};
use anyhow::{bail, Context};
use dataset::manifest::Split;
use dataset::sampler::{split_keys, Batch, Loader, Sampler, SamplerConfig, SliceKey};
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
    validator: Validator,
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
    pb: ProgressBar,
    t0: Instant,
    stop: StopFlag,
    /// Held for the whole run: no second process trains in the folder.
    _lock: util::lock::FolderLock,
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
        let (cfg, run, lock) = open_run(spec, &ds)?;
        if cfg.threads > 0 {
            tch::set_num_threads(cfg.threads as i32);
        }
        if cfg.deterministic {
            make_deterministic()?;
        }
        let device = model::device::select(&cfg.device)?;
        let mut human = HumanLog::open(&run.log())?;
        let sampler = training_sampler(&cfg, &ds, &spec.data)?;
        let validator = Validator::load(
            &ds,
            cfg.window(),
            cfg.size_multiple(),
            cfg.log.val_max_cases,
        )?;
        let mut nets = catch_torch("building the networks", || Ok(Nets::new(&cfg, device)))?;
        // The perceptual loss's frozen VGG (checked against the recorded SHA-256) and the log
        // lines describing the image loss terms.
        let image_lines = crate::image_losses::attach(&mut nets, &cfg, device)?;
        let mut opts = nets.optimizers(&cfg)?;
        let total = cfg.schedule.steps;
        let resume = matches!(spec.start, Start::Resume { .. });
        let (start, best, events) =
            restore_or_begin(&run, &mut nets, &mut opts, &mut human, resume)?;
        let mut trainer = Self {
            pb: progress_bar(&cfg, total),
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
            t0,
            stop: spec.stop.clone(),
            _lock: lock,
        };
        trainer.log_start(&image_lines)?;
        Ok(trainer)
    }

    /// The start-up line (device, data, model, steps) and the `start` event of a new run.
    fn log_start(&mut self, image_lines: &[String]) -> anyhow::Result<()> {
        let (cfg, nets) = (&self.cfg, &self.nets);
        let summary = model::summary::NetworkCount::of(&nets.gr_store);
        let line = format!(
            "run {} | device {:?} | data {} ({} training slices, {} validation cases) | preset \
             {} | registration {} | steps {}..{} | batch {} x {}px | G+R variables {} ({} \
             params)",
            self.run.root().display(),
            self.device,
            self.data.display(),
            self.sampler.slices_per_epoch(),
            self.validator.cases.len(),
            cfg.preset,
            if cfg.registration { "on" } else { "off" },
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
                ("val_cases", Value::from(self.validator.cases.len())),
                ("total_steps", Value::from(self.total)),
            ];
            self.events.write(0, "start", &fields)?;
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
                return Ok(self.outcome(step));
            }
        }
        drop(loader);
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
        let tensors = BatchTensors::from_batch(batch, self.device)?;
        let (cfg, events, human) = (&self.cfg, &mut self.events, &mut self.human);
        self.pb.suspend(|| {
            crate::phases::log_switch(&cfg.progressive, step, self.total, events, human)
        })?;
        let lr_factor = cfg.schedule.lr_factor(step);
        let log_now = is_due(step, cfg.log.every, self.total);
        let (nets, opts) = (&mut self.nets, &mut self.opts);
        let result = catch_torch(&format!("step {step}"), || {
            Ok(train_step(
                nets, opts, &tensors, cfg, step, lr_factor, log_now,
            ))
        })?;
        result.map_err(|nf| {
            self.pb.abandon();
            stop_non_finite(
                &self.run,
                &self.nets,
                &tensors,
                &batch.keys,
                &nf,
                (&mut self.events, &mut self.human),
            )
        })
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
        if log_now {
            let fields = train_fields(stats, epoch, self.opts.gr.lr(), keys);
            self.events.write(step, "train", &fields)?;
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
        if is_due(step, self.cfg.log.val_every, total) {
            self.validate(step, epoch)?;
        }
        if is_due(step, self.cfg.log.sample_every, total) {
            let path = self.run.sample(step);
            let (validator, nets, device) = (&self.validator, &self.nets, self.device);
            catch_torch(&format!("the sample grid of step {step}"), || {
                validator.sample_grid(nets, device, step, &path)
            })?;
        }
        if is_due(step, self.cfg.log.checkpoint_every, total) {
            self.save_latest(step, epoch)?;
        }
        if self.cfg.hooks.stop_after_step == Some(step) && step < total {
            self.human
                .line(&format!("stopping after step {step} (test hook)"));
            return Ok(ControlFlow::Break(()));
        }
        if let Some(signal) = self.stop.requested().filter(|_| step < total) {
            self.stop_on_signal(step, epoch, signal)?;
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
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
        let (validator, nets, device) = (&self.validator, &self.nets, self.device);
        self.last = catch_torch(&format!("validation at step {step}"), || {
            validator.run(nets, device)
        })?;
        let mut fields = vec![("epoch", num(epoch))];
        for (k, v) in self.last.fields() {
            fields.push((k, v.map_or(Value::Null, num)));
        }
        for (k, (_, v)) in BASELINE_KEYS
            .into_iter()
            .zip(self.validator.baseline.fields())
        {
            fields.push((k, v.map_or(Value::Null, num)));
        }
        fields.push(("seconds", num(t.elapsed().as_secs_f64())));
        self.events.write(step, "val", &fields)?;
        let line = format!(
            "step {step}: validation {}",
            scores_line(&self.last, &self.validator.baseline)
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
        let state = TrainState::new(&self.cfg, step, epoch, self.best.clone());
        checkpoint::save(&self.run, "best", &self.nets, &self.opts, &state)?;
        let fields = [("name", "best".into()), (metric.key(), num(value))];
        self.events.write(step, "checkpoint", &fields)
    }

    /// Saves `latest` (and `final` at the last step).
    fn save_latest(&mut self, step: u64, epoch: f64) -> anyhow::Result<()> {
        let state = TrainState::new(&self.cfg, step, epoch, self.best.clone());
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
                scores_line(&self.last, &self.validator.baseline)
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
            baseline: self.validator.baseline,
            best: self.best.clone(),
            device: format!("{:?}", self.device),
            wall: self.t0.elapsed(),
            stopped: (steps < self.total)
                .then(|| self.stop.requested())
                .flatten(),
        }
    }
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
fn restore_or_begin(
    run: &RunDir,
    nets: &mut Nets,
    opts: &mut Optimizers,
    human: &mut HumanLog,
    resume: bool,
) -> anyhow::Result<(u64, Option<Best>, EventLog)> {
    if !resume {
        return Ok((0, None, EventLog::open(&run.metrics())?));
    }
    let dir = checkpoint::resume_dir(run)?;
    let state = checkpoint::restore(&dir, nets, opts)?;
    let mut events = EventLog::open_resumed(&run.metrics(), state.step)?;
    let from = Value::from(dir.display().to_string());
    events.write(state.step, "resume", &[("from", from)])?;
    human.line(&format!(
        "resumed from {} at step {}",
        dir.display(),
        state.step
    ));
    Ok((state.step, state.best, events))
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
            cfg.resolve(ds.window(), probe.len())?;
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
            let mut layers = vec![toml::from_str(&read_text(&run.config())?)
                .with_context(|| format!("config {}", run.config().display()))?];
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
    )?;
    Ok(Arc::new(sampler))
}

/// The NCCT baseline's keys in `val` events, in [`Scores::fields`] order.
const BASELINE_KEYS: [&str; 6] = [
    "baseline_mae_body",
    "baseline_mae_lung",
    "baseline_psnr_body",
    "baseline_psnr_lung",
    "baseline_ssim_body",
    "baseline_ssim_lung",
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
