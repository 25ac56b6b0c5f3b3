//! Data loading throughput: random augmented crops from the prepared slice store
//! (`dataset::sampler::Sampler::batch`, what the trainer's loader threads run), alone and
//! while training steps run on the same cores.
//!
//! Workers call `Sampler::batch` for successive steps on their own threads, as
//! `dataset::sampler::Loader`'s workers do, but without its bounded queue, so the figure is
//! the loader's capacity rather than the trainer's demand.

use anyhow::Context;
use dataset::augment::AugmentConfig;
use dataset::manifest::Split;
use dataset::prepare::{prepare, PrepareOptions};
use dataset::sampler::{split_keys, Sampler, SamplerConfig, SliceKey};
use dataset::store::{PreparedDataset, WindowedStore};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Loading figures for one crop size and batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    pub dataset: PathBuf,
    /// Slice size of the store, `(height, width)`.
    pub slice_hw: (usize, usize),
    pub crop: usize,
    pub batch: usize,
    /// Loader threads.
    pub workers: usize,
    /// Slices per second with the cores to itself.
    pub alone_slices_per_s: f64,
    /// Slices per second while the training step runs on the main thread.
    pub during_training_slices_per_s: f64,
    /// Median training step while the loader runs, s.
    pub during_training_step_s: f64,
    /// Slices per second training consumes (`batch / step median` without the loader).
    pub training_consumes_slices_per_s: f64,
}

/// An opened store and its slice keys (all splits: the bench only reads).
pub struct Store {
    pub root: PathBuf,
    pub ds: Arc<PreparedDataset>,
    pub keys: Vec<SliceKey>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("slices", &self.keys.len())
            .finish()
    }
}

impl Store {
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let ds = PreparedDataset::open(root)
            .with_context(|| format!("opening the prepared dataset {}", root.display()))?;
        let mut keys = Vec::new();
        for split in [Split::Train, Split::Val, Split::Test] {
            keys.extend(split_keys(&ds, split, 0.05)?);
        }
        anyhow::ensure!(
            !keys.is_empty(),
            "{}: no slice with enough body to sample",
            root.display()
        );
        Ok(Self {
            root: root.to_path_buf(),
            ds: Arc::new(ds),
            keys,
        })
    }

    /// `(height, width)` of the store's slices (of the first key's case).
    pub fn slice_hw(&self) -> anyhow::Result<(usize, usize)> {
        let k = self.keys[0];
        Ok(self.ds.slice_at(k.case, k.z)?.dim())
    }

    fn sampler(&self, crop: usize, batch: usize) -> anyhow::Result<Sampler<WindowedStore>> {
        Ok(Sampler::new(
            Arc::new(WindowedStore::with_dataset_window(Arc::clone(&self.ds))),
            self.keys.clone(),
            SamplerConfig {
                batch_size: batch,
                crop_size: crop,
                fill: -1.0,
                seed: 42,
                augment: AugmentConfig::default(),
            },
        )?)
    }
}

/// Writes `cases` small phantom pairs under `dir/raw` and prepares them into `dir/prepared`
/// (no rigid pre-alignment: the bench needs slices, not aligned ones). Returns the prepared
/// folder.
pub fn phantom_store(dir: &Path, cases: usize) -> anyhow::Result<PathBuf> {
    use dataset::manifest::AlignMode;
    use dataset::phantom::{write_dataset, PhantomConfig, WriteOptions};
    let raw = dir.join("raw");
    let out = dir.join("prepared");
    let opts = WriteOptions {
        cases,
        overwrite: false,
        preview: false,
    };
    write_dataset(&raw, &PhantomConfig::default(), &opts, &|_| {})
        .context("writing the phantom set")?;
    let discovery = dataset::raw::discover(&raw).context("discovering the phantom set")?;
    let mut popts = PrepareOptions::default();
    popts.settings.align = AlignMode::None;
    prepare(&discovery, &out, &popts, &|_| {}).context("preparing the phantom set")?;
    Ok(out)
}

/// Runs `workers` threads producing batches until `stop` is set or `limit` batches are done;
/// returns batches done and seconds.
fn produce(
    sampler: &Sampler<WindowedStore>,
    workers: usize,
    limit: Option<u64>,
    stop: &AtomicBool,
) -> anyhow::Result<(u64, f64)> {
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    while !stop.load(Ordering::Relaxed) {
                        let step = next.fetch_add(1, Ordering::Relaxed);
                        if limit.is_some_and(|l| step >= l) {
                            break;
                        }
                        std::hint::black_box(sampler.batch(step)?);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a loader thread panicked"))??;
        }
        Ok(())
    })?;
    Ok((done.load(Ordering::Relaxed), t0.elapsed().as_secs_f64()))
}

/// What to load in [`measure`].
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Crop side, pixels.
    pub crop: usize,
    /// Slices per batch.
    pub batch: usize,
    /// Loader threads.
    pub workers: usize,
    /// Batches for the loading-alone figure.
    pub batches: u64,
    /// Training steps run while loading.
    pub steps: usize,
}

/// Loading throughput alone (`spec.batches` batches) and while `train(k)` runs `spec.steps`
/// training steps on this thread (returning each step's seconds); `step_alone_s` is the
/// step's median without the loader.
pub fn measure(
    store: &Store,
    spec: &LoadSpec,
    step_alone_s: f64,
    mut train: impl FnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<DataReport> {
    let LoadSpec {
        crop,
        batch,
        workers,
        batches,
        steps,
    } = *spec;
    let sampler = store.sampler(crop, batch)?;
    let never = AtomicBool::new(false);
    // warm the page cache and the allocator
    produce(&sampler, workers, Some(workers as u64), &never)?;
    let (n, secs) = produce(&sampler, workers, Some(batches), &never)?;
    let alone = (n as usize * batch) as f64 / secs;

    let stop = AtomicBool::new(false);
    let (loaded, step_times) = std::thread::scope(|s| -> anyhow::Result<_> {
        let loader = s.spawn(|| produce(&sampler, workers, None, &stop));
        let mut times = Vec::with_capacity(steps);
        let mut err = None;
        for k in 0..steps {
            match train(k) {
                Ok(t) => times.push(t),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let loaded = loader
            .join()
            .map_err(|_| anyhow::anyhow!("the loader panicked"))??;
        match err {
            Some(e) => Err(e),
            None => Ok((loaded, times)),
        }
    })?;
    let during = (loaded.0 as usize * batch) as f64 / loaded.1;
    let step_during = crate::stats::Timings::of(step_times).map_or(f64::NAN, |s| s.median);
    Ok(DataReport {
        dataset: store.root.clone(),
        slice_hw: store.slice_hw()?,
        crop,
        batch,
        workers,
        alone_slices_per_s: alone,
        during_training_slices_per_s: during,
        during_training_step_s: step_during,
        training_consumes_slices_per_s: batch as f64 / step_alone_s,
    })
}
