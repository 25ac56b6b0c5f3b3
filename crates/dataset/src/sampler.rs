//! Random training batches from a prepared dataset, reproducible from `(seed, step)`, and a
//! background loader that prepares them while the trainer computes.
//!
//! # Why `(seed, step)` and not a stateful RNG
//! Every sample's content is a pure function of the run seed and the sample's global index
//! `k = step * batch_size + b`:
//! - the slice is `perm(epoch)[k mod N]`, where `epoch = k / N`, `N` is the number of training
//!   slices and `perm(epoch)` is a shuffle drawn from its own RNG stream `(seed, epoch)`, so each
//!   epoch visits every slice once;
//! - the crop and augmentation come from the RNG stream `(seed, k)`.
//!
//! With data parallelism ([`Shard`]), step `s`'s global batch is the `world * batch_size`
//! samples `k = s * world * batch_size + j`, and rank `r` takes every `world`-th of them
//! (`j = i * world + r`), as torch's `DistributedSampler` deals a permutation: the ranks
//! together see exactly the samples one process with the global batch would, each sample with
//! its own augmentation stream. The stream of samples never ends (the epoch is `k / N`), so no
//! padding to a multiple of the world size is needed.
//!
//! So the loader has no state to save: resuming at step `s` reproduces exactly the batches an
//! uninterrupted run would have seen, any number of worker threads produce the same batches,
//! and nothing about the loader needs to go into a checkpoint.

use crate::augment::{augment_crop, AugmentConfig, SlicePair};
use ndarray::{s, Array4};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors of sampling: a slice that could not be read, or an inconsistent request.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The slice store failed to deliver a slice.
    #[error("reading slice z={} of case #{}: {source}", key.z, key.case)]
    Read {
        key: SliceKey,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request or the data is inconsistent (empty split, bad shapes, bad crop size).
    #[error("{0}")]
    Invalid(String),
    /// A loader thread stopped unexpectedly.
    #[error("data loader thread {0} stopped unexpectedly")]
    WorkerDied(usize),
}

/// One axial slice of one case: `case` indexes the list the source was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SliceKey {
    pub case: usize,
    pub z: usize,
}

/// Something that yields co-registered, normalised slice pairs with masks: the prepared
/// dataset in production, an in-memory set in tests.
pub trait SliceSource: Send + Sync {
    /// Reads one slice (images normalised to [-1, 1], masks 0/1), all arrays `[height, width]`.
    fn read_pair(&self, key: SliceKey) -> Result<SlicePair, SamplerError>;

    /// Number of slices of case `case` (0 for an unknown case): where 2.5D context clamps.
    fn depth(&self, case: usize) -> usize;

    /// The normalised NCCT of one slice (2.5D context).
    fn read_ncct(&self, key: SliceKey) -> Result<ndarray::Array2<f32>, SamplerError> {
        Ok(self.read_pair(key)?.ncct)
    }
}

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Slices per batch.
    pub batch_size: usize,
    /// Side of the square random crop, pixels (the trainer makes it a multiple of the
    /// networks' size multiple).
    pub crop_size: usize,
    /// Image value outside the slice after a rotation or padding (normalised air: -1).
    pub fill: f32,
    /// Run seed.
    pub seed: u64,
    /// Augmentation of each sample.
    pub augment: AugmentConfig,
}

/// A batch in NCHW layout, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The training step this batch belongs to.
    pub step: u64,
    /// Which slice each batch element came from.
    pub keys: Vec<SliceKey>,
    /// `[batch, 2k + 1, height, width]`, normalised: the slice with `k` neighbours on each
    /// side (`k = 0` unless [`Sampler::with_context`]); the slice itself is channel `k`.
    pub ncct: Array4<f32>,
    /// `[batch, 1, height, width]`, normalised.
    pub ctpa: Array4<f32>,
    /// `[batch, 1, height, width]`, 0.0 or 1.0.
    pub lung: Array4<f32>,
    /// `[batch, 1, height, width]`, 0.0 or 1.0.
    pub body: Array4<f32>,
}

/// Stream offset separating the permutation RNGs from the per-sample RNGs.
const PERMUTATION_SALT: u64 = 0x9E37_79B9_7F4A_7C15;

/// This process's share of every global batch: rank `rank` of `world` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    /// The whole batch: one process.
    fn default() -> Self {
        Self { rank: 0, world: 1 }
    }
}

/// Draws reproducible batches from a [`SliceSource`].
pub struct Sampler<S> {
    source: Arc<S>,
    keys: Vec<SliceKey>,
    cfg: SamplerConfig,
    shard: Shard,
    /// 2.5D: NCCT slices on each side of the sampled one (0: one-slice input).
    context: usize,
}

impl<S> std::fmt::Debug for Sampler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("slices", &self.keys.len())
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<S: SliceSource> Sampler<S> {
    /// A sampler over `keys` (the training slices, in a fixed order: the shuffles are drawn
    /// over this order, so the same keys in the same order give the same batches).
    pub fn new(
        source: Arc<S>,
        keys: Vec<SliceKey>,
        cfg: SamplerConfig,
    ) -> Result<Self, SamplerError> {
        if keys.is_empty() {
            return Err(SamplerError::Invalid(
                "no training slices to sample from".into(),
            ));
        }
        if cfg.batch_size == 0 || cfg.crop_size == 0 {
            return Err(SamplerError::Invalid(format!(
                "batch size ({}) and crop size ({}) must be positive",
                cfg.batch_size, cfg.crop_size
            )));
        }
        cfg.augment.validate().map_err(SamplerError::Invalid)?;
        Ok(Self {
            source,
            keys,
            cfg,
            shard: Shard::default(),
            context: 0,
        })
    }

    /// This sampler serving 2.5D input: each sample's NCCT comes with `k` slices on each side
    /// (clamped at the volume's ends, as prediction does), so batches have `2k + 1` NCCT
    /// channels ([`Batch::ncct`]); the target, masks and the sample's crop and augmentation
    /// stay those of the middle slice, which draws exactly what it would without context.
    pub fn with_context(mut self, k: usize) -> Self {
        self.context = k;
        self
    }

    /// NCCT channels of a sample: `2k + 1`.
    pub fn channels(&self) -> usize {
        2 * self.context + 1
    }

    /// This sampler drawing only `shard`'s samples of each global batch.
    pub fn with_shard(mut self, shard: Shard) -> Result<Self, SamplerError> {
        if shard.world == 0 || shard.rank >= shard.world {
            return Err(SamplerError::Invalid(format!(
                "rank {} of a world of {}",
                shard.rank, shard.world
            )));
        }
        self.shard = shard;
        Ok(self)
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Number of training slices (one epoch visits each once).
    pub fn slices_per_epoch(&self) -> usize {
        self.keys.len()
    }

    /// The (fractional) epoch reached after `steps` steps (of the global batch).
    pub fn epoch_at(&self, steps: u64) -> f64 {
        (steps as f64 * (self.cfg.batch_size * self.shard.world) as f64) / self.keys.len() as f64
    }

    /// The slice that global sample index `k` reads.
    pub fn key_of(&self, k: u64) -> SliceKey {
        let n = self.keys.len() as u64;
        let perm = epoch_permutation(self.cfg.seed, k / n, self.keys.len());
        self.keys[perm[(k % n) as usize]]
    }

    /// Global sample `k`: its slice, cropped and augmented with the RNG stream `(seed, k)`.
    pub fn sample(&self, k: u64) -> Result<(SliceKey, SlicePair), SamplerError> {
        let key = self.key_of(k);
        self.sample_key(k, key)
    }

    fn sample_key(&self, k: u64, key: SliceKey) -> Result<(SliceKey, SlicePair), SamplerError> {
        let mut pair = self.source.read_pair(key)?;
        if self.context > 0 {
            let last = self.source.depth(key.case).saturating_sub(1);
            let c = self.context as isize;
            for j in (-c..0).chain(1..=c) {
                let z = (key.z as isize + j).clamp(0, last as isize) as usize;
                let n = self.source.read_ncct(SliceKey { case: key.case, z })?;
                pair.context.push(n);
            }
        }
        let mut rng = sample_rng(self.cfg.seed, k);
        let out = augment_crop(
            &pair,
            self.cfg.crop_size,
            &self.cfg.augment,
            self.cfg.fill,
            &mut rng,
        )
        .map_err(|m| SamplerError::Invalid(format!("case #{} z={}: {m}", key.case, key.z)))?;
        Ok((key, out))
    }

    /// This shard's batch of training step `step` (0-based).
    pub fn batch(&self, step: u64) -> Result<Batch, SamplerError> {
        let b = self.cfg.batch_size;
        let c = self.cfg.crop_size;
        let n = self.keys.len() as u64;
        let (rank, world) = (self.shard.rank as u64, self.shard.world as u64);
        let first = step * b as u64 * world;
        // A batch spans at most two epochs: keep the current permutation.
        let mut perm_epoch = u64::MAX;
        let mut perm = Vec::new();
        let mut batch = Batch {
            step,
            keys: Vec::with_capacity(b),
            ncct: Array4::zeros((b, self.channels(), c, c)),
            ctpa: Array4::zeros((b, 1, c, c)),
            lung: Array4::zeros((b, 1, c, c)),
            body: Array4::zeros((b, 1, c, c)),
        };
        for i in 0..b {
            let k = first + i as u64 * world + rank;
            let epoch = k / n;
            if epoch != perm_epoch {
                perm = epoch_permutation(self.cfg.seed, epoch, self.keys.len());
                perm_epoch = epoch;
            }
            let key = self.keys[perm[(k % n) as usize]];
            let (key, pair) = self.sample_key(k, key)?;
            batch.keys.push(key);
            for (ch, img) in pair.ncct_channels().into_iter().enumerate() {
                batch.ncct.slice_mut(s![i, ch, .., ..]).assign(img);
            }
            batch.ctpa.slice_mut(s![i, 0, .., ..]).assign(&pair.ctpa);
            batch
                .lung
                .slice_mut(s![i, 0, .., ..])
                .assign(&pair.lung.mapv(f32::from));
            batch
                .body
                .slice_mut(s![i, 0, .., ..])
                .assign(&pair.body.mapv(f32::from));
        }
        Ok(batch)
    }
}

/// The RNG stream of global sample `k`.
pub fn sample_rng(seed: u64, k: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(k);
    rng
}

/// The visiting order of the training slices in `epoch`.
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ PERMUTATION_SALT);
    rng.set_stream(epoch);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    perm
}

/// Prepares batches on background threads, ahead of the trainer, in step order.
///
/// Worker `w` of `n` builds the batches of steps `start + w, start + w + n, ...` and hands
/// them over through its own bounded channel of `prefetch` batches, so at most
/// `n * prefetch` batches wait in memory and the trainer reads them back in order by
/// polling the workers round-robin. Batches do not depend on the worker that built them
/// (see the module docs).
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch, SamplerError>>>,
    handles: Vec<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    next: u64,
    end: u64,
    start: u64,
    last_wait: Duration,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("workers", &self.receivers.len())
            .field("next", &self.next)
            .field("end", &self.end)
            .finish()
    }
}

impl Loader {
    /// Starts `workers` threads (at least one) producing the batches of `steps`.
    pub fn spawn<S: SliceSource + 'static>(
        sampler: Arc<Sampler<S>>,
        steps: Range<u64>,
        workers: usize,
        prefetch: usize,
    ) -> Result<Self, SamplerError> {
        let workers = workers.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(prefetch.max(1));
            let sampler = Arc::clone(&sampler);
            let stop = Arc::clone(&stop);
            let first = steps.start + w as u64;
            let (end, stride) = (steps.end, workers as u64);
            let handle = std::thread::Builder::new()
                .name(format!("loader-{w}"))
                .spawn(move || worker(&sampler, first, end, stride, &tx, &stop))
                .map_err(|e| SamplerError::Invalid(format!("cannot start loader thread: {e}")))?;
            receivers.push(rx);
            handles.push(Some(handle));
        }
        tracing::debug!(
            workers,
            prefetch,
            start = steps.start,
            end = steps.end,
            "data loader started"
        );
        Ok(Self {
            receivers,
            handles,
            stop,
            next: steps.start,
            end: steps.end,
            start: steps.start,
            last_wait: Duration::ZERO,
        })
    }

    /// The batch of the next step, waiting for it if it is not ready; `None` after the last.
    pub fn next_batch(&mut self) -> Option<Result<Batch, SamplerError>> {
        if self.next >= self.end {
            return None;
        }
        let w = ((self.next - self.start) % self.receivers.len() as u64) as usize;
        let t0 = Instant::now();
        let got = self.receivers[w].recv();
        self.last_wait = t0.elapsed();
        self.next += 1;
        Some(got.unwrap_or(Err(SamplerError::WorkerDied(w))))
    }

    /// How long the last [`Loader::next_batch`] blocked: a trainer that sees this grow is
    /// starved by its data (more workers, or a faster store, would help).
    pub fn last_wait(&self) -> Duration {
        self.last_wait
    }
}

fn worker<S: SliceSource>(
    sampler: &Sampler<S>,
    first: u64,
    end: u64,
    stride: u64,
    tx: &SyncSender<Result<Batch, SamplerError>>,
    stop: &AtomicBool,
) {
    let mut step = first;
    while step < end && !stop.load(Ordering::Relaxed) {
        let batch = sampler.batch(step);
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            // The trainer is gone, or it will stop at this error.
            return;
        }
        step += stride;
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers makes any blocked `send` fail, so every worker returns.
        self.receivers.clear();
        for h in &mut self.handles {
            if let Some(h) = h.take() {
                let _ = h.join();
            }
        }
    }
}

/// A [`SliceSource`] held in memory (small datasets, tests).
#[derive(Debug, Clone, Default)]
pub struct InMemorySource {
    /// `cases[case][z]`.
    pub cases: Vec<Vec<SlicePair>>,
}

impl InMemorySource {
    /// All slice keys, case by case.
    pub fn keys(&self) -> Vec<SliceKey> {
        self.cases
            .iter()
            .enumerate()
            .flat_map(|(case, zs)| (0..zs.len()).map(move |z| SliceKey { case, z }))
            .collect()
    }
}

impl SliceSource for InMemorySource {
    fn depth(&self, case: usize) -> usize {
        self.cases.get(case).map_or(0, Vec::len)
    }

    fn read_pair(&self, key: SliceKey) -> Result<SlicePair, SamplerError> {
        self.cases
            .get(key.case)
            .and_then(|c| c.get(key.z))
            .cloned()
            .ok_or_else(|| {
                SamplerError::Invalid(format!("no slice z={} in case #{}", key.z, key.case))
            })
    }
}

impl SliceSource for crate::store::WindowedStore {
    fn depth(&self, case: usize) -> usize {
        self.dataset().depth_at(case).unwrap_or(0)
    }

    fn read_pair(&self, key: SliceKey) -> Result<SlicePair, SamplerError> {
        let s = self
            .dataset()
            .slice_at(key.case, key.z)
            .map_err(|e| SamplerError::Read {
                key,
                source: Box::new(e),
            })?;
        let w = self.window();
        Ok(SlicePair {
            ncct: s.ncct.mapv(|v| w.normalize(f32::from(v))),
            ctpa: s.ctpa.mapv(|v| w.normalize(f32::from(v))),
            lung: s.lung.to_owned(),
            body: s.body.to_owned(),
            context: Vec::new(),
        })
    }
}

/// The slices of `split` worth training on: those whose body mask covers at least
/// `min_body_fraction` of the slice (the first and last slices of a scan often hold only air
/// or the table, and teach nothing). Keys index [`crate::manifest::Manifest::cases`], in
/// manifest order then `z`, so the same dataset always yields the same list.
pub fn split_keys(
    ds: &crate::store::PreparedDataset,
    split: crate::manifest::Split,
    min_body_fraction: f64,
) -> Result<Vec<SliceKey>, SamplerError> {
    let mut keys = Vec::new();
    let mut skipped = 0usize;
    for (case, entry) in ds.manifest().cases.iter().enumerate() {
        if entry.split != split {
            continue;
        }
        for z in 0..entry.meta.slices() {
            let key = SliceKey { case, z };
            let s = ds.slice_at(case, z).map_err(|e| SamplerError::Read {
                key,
                source: Box::new(e),
            })?;
            let n = s.body.len().max(1);
            let inside = s.body.iter().filter(|&&v| v != 0).count();
            if inside as f64 >= min_body_fraction * n as f64 {
                keys.push(key);
            } else {
                skipped += 1;
            }
        }
    }
    tracing::debug!(
        ?split,
        kept = keys.len(),
        skipped,
        min_body_fraction,
        "slices selected"
    );
    Ok(keys)
}
