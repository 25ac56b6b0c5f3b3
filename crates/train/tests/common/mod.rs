//! What the trainer's integration tests share: one small prepared dataset per test binary,
//! the lock that runs libtorch users one at a time, the tiny training configuration, a fixed
//! batch and the run spec.
#![allow(dead_code)] // each test binary uses its own subset

use dataset::augment::AugmentConfig;
use std::path::{Path, PathBuf};
use train::config::TestHooks;
use train::config::TrainConfig;
use train::step::BatchTensors;
use train::trainer::{RunSpec, Start};

/// One prepared dataset per test binary (prepare takes a moment; tests only read it).
pub fn dataset() -> PathBuf {
    static DATA: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let p = dataset::fixtures::synthetic_dataset(tmp.path(), 3).unwrap();
        (tmp, p)
    })
    .1
    .clone()
}

/// libtorch's RNG and thread count are process-wide: tests that build networks or train run
/// one at a time, or their seeds would interleave.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tiny preset on the CPU, one thread, batches of two 32 px crops, a high learning rate,
/// logging every step and validation, checkpoints and samples every 3 steps.
pub fn tiny(steps: u64) -> TrainConfig {
    let mut c = TrainConfig::with_preset("tiny").unwrap();
    c.device = "cpu".into();
    c.threads = 1;
    c.schedule.steps = steps;
    c.data.batch_size = 2;
    c.data.crop_size = 32;
    c.data.loader_threads = 2;
    c.data.min_body_fraction = 0.0;
    c.optim.generator.lr = 2e-3;
    c.optim.discriminator.lr = 2e-3;
    c.log.every = 1;
    c.log.val_every = 3;
    c.log.checkpoint_every = 3;
    c.log.sample_every = 3;
    c.log.progress = false;
    c
}

/// The same two 32 px crops of the training split every time, without augmentation.
pub fn fixed_batch() -> BatchTensors {
    fixed_batch_for(&TrainConfig::default())
}

/// [`fixed_batch`] arranged for `cfg` (its 2.5D input, R across slices).
pub fn fixed_batch_for(cfg: &TrainConfig) -> BatchTensors {
    let ds = std::sync::Arc::new(dataset::store::PreparedDataset::open(&dataset()).unwrap());
    let keys = dataset::sampler::split_keys(&ds, dataset::manifest::Split::Train, 0.0).unwrap();
    let sampler = dataset::sampler::Sampler::new(
        std::sync::Arc::new(dataset::store::WindowedStore::with_dataset_window(ds)),
        keys,
        dataset::sampler::SamplerConfig {
            batch_size: 2,
            crop_size: 32,
            fill: -1.0,
            seed: 1,
            augment: AugmentConfig::none(),
        },
    )
    .unwrap()
    .with_context(train::step::sampler_context(cfg));
    BatchTensors::from_batch(&sampler.batch(0).unwrap(), tch::Device::Cpu, cfg).unwrap()
}

/// A new run of `cfg` on `data` into `run`.
pub fn new_run(cfg: TrainConfig, data: &Path, run: &Path) -> RunSpec {
    RunSpec {
        data: data.to_path_buf(),
        run: run.to_path_buf(),
        start: Start::New(Box::new(cfg)),
        stop: Default::default(),
        dist: None,
    }
}

/// Resuming the run in `run` (its own config), with `hooks`.
pub fn resume_run(data: &Path, run: &Path, hooks: TestHooks) -> RunSpec {
    RunSpec {
        data: data.to_path_buf(),
        run: run.to_path_buf(),
        start: Start::Resume {
            local: Default::default(),
            hooks,
            allow_other_data: false,
        },
        stop: Default::default(),
        dist: None,
    }
}

/// The events of kind `kind` ("train", "val", "phase", ...) in a run's metrics.jsonl.
pub fn events(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    train::events::read_events(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|e| e["event"] == kind)
        .collect()
}
