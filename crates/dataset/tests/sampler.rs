//! The sampler is a pure function of (seed, step): reproducible, worker-count independent,
//! resumable, and it visits every training slice once per epoch.

use dataset::augment::{AugmentConfig, SlicePair};
use dataset::sampler::{InMemorySource, Loader, Sampler, SamplerConfig, Shard, SliceKey};
use ndarray::Array2;
use std::collections::HashSet;
use std::sync::Arc;

/// Two cases of 5 and 4 slices; every pixel of slice (case, z) encodes (case, z) so a batch
/// element can be traced back to its slice.
fn source() -> InMemorySource {
    let slice = |case: usize, z: usize| {
        let v = (case * 10 + z) as f32;
        let img = Array2::from_shape_fn((24, 24), |(y, x)| v + 0.001 * (y * 24 + x) as f32);
        SlicePair {
            ctpa: img.clone() + 100.0,
            ncct: img,
            lung: Array2::from_shape_fn((24, 24), |(y, _)| u8::from(y < 12)),
            body: Array2::ones((24, 24)),
            context: Vec::new(),
        }
    };
    InMemorySource {
        cases: vec![
            (0..5).map(|z| slice(0, z)).collect(),
            (0..4).map(|z| slice(1, z)).collect(),
        ],
    }
}

fn sampler(seed: u64, batch_size: usize) -> Arc<Sampler<InMemorySource>> {
    let src = Arc::new(source());
    let keys = src.keys();
    let cfg = SamplerConfig {
        batch_size,
        crop_size: 16,
        fill: -1.0,
        seed,
        augment: AugmentConfig::default(),
    };
    Arc::new(Sampler::new(src, keys, cfg).unwrap())
}

#[test]
fn batches_are_reproducible_and_seed_dependent() {
    let a = sampler(42, 3);
    let b = sampler(42, 3);
    let c = sampler(43, 3);
    for step in [0u64, 1, 7, 100] {
        assert_eq!(
            a.batch(step).unwrap(),
            b.batch(step).unwrap(),
            "step {step}"
        );
    }
    assert_ne!(a.batch(0).unwrap().ncct, c.batch(0).unwrap().ncct);
    assert_ne!(a.batch(0).unwrap().ncct, a.batch(1).unwrap().ncct);
}

/// Data parallelism: the shards of a world of 3 with batch 2 are, element by element, the
/// global batch of 6 that one process draws (rank r holds elements r, r + 3), augmentation
/// included; and the epoch counts global samples.
#[test]
fn shards_deal_the_global_batch_like_distributed_sampler() {
    let whole = sampler(7, 6);
    let shard = |rank| {
        let src = Arc::new(source());
        let cfg = whole.config().clone();
        let keys = src.keys();
        Sampler::new(
            src,
            keys,
            SamplerConfig {
                batch_size: 2,
                ..cfg
            },
        )
        .unwrap()
        .with_shard(Shard { rank, world: 3 })
        .unwrap()
    };
    let shards: Vec<_> = (0..3).map(shard).collect();
    for step in [0u64, 1, 5] {
        let global = whole.batch(step).unwrap();
        for (rank, s) in shards.iter().enumerate() {
            let part = s.batch(step).unwrap();
            for i in 0..2 {
                let j = i * 3 + rank;
                assert_eq!(
                    part.keys[i], global.keys[j],
                    "step {step} rank {rank} elem {i}"
                );
                assert_eq!(
                    part.ncct.index_axis(ndarray::Axis(0), i),
                    global.ncct.index_axis(ndarray::Axis(0), j)
                );
            }
        }
    }
    assert_eq!(shards[1].epoch_at(3), whole.epoch_at(3));
    assert_eq!(shards[0].shard(), Shard { rank: 0, world: 3 });
    let src = Arc::new(source());
    let keys = src.keys();
    let bad = Sampler::new(src, keys, whole.config().clone())
        .unwrap()
        .with_shard(Shard { rank: 3, world: 3 });
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("rank 3 of a world of 3"));
}

#[test]
fn each_epoch_visits_every_slice_once() {
    let s = sampler(1, 3);
    let n = s.slices_per_epoch() as u64;
    assert_eq!(n, 9);
    for epoch in 0..3u64 {
        let seen: HashSet<SliceKey> = (epoch * n..(epoch + 1) * n).map(|k| s.key_of(k)).collect();
        assert_eq!(seen.len(), 9, "epoch {epoch}");
    }
    // Different epochs are shuffled differently.
    let e0: Vec<SliceKey> = (0..n).map(|k| s.key_of(k)).collect();
    let e1: Vec<SliceKey> = (n..2 * n).map(|k| s.key_of(k)).collect();
    assert_ne!(e0, e1);
    // Batches report the slices they hold (batch 3 spans epochs 0 and 1: samples 9..12).
    let b = s.batch(3).unwrap();
    assert_eq!(b.keys, vec![s.key_of(9), s.key_of(10), s.key_of(11)]);
    // and each element carries its slice's content (CTPA = NCCT + 100 before jitter, so check
    // the un-jittered CTPA's value range against the key).
    for (i, key) in b.keys.iter().enumerate() {
        let v = (key.case * 10 + key.z) as f32 + 100.0;
        let centre = b.ctpa[[i, 0, 8, 8]];
        assert!(
            (centre - v).abs() < 1.0,
            "element {i}: {centre} vs slice value {v}"
        );
    }
    assert_eq!(b.ncct.shape(), &[3, 1, 16, 16]);
    assert!(b.lung.iter().all(|&v| v == 0.0 || v == 1.0));
}

#[test]
fn loader_matches_direct_sampling_for_any_worker_count_and_start() {
    let s = sampler(9, 2);
    let direct: Vec<_> = (0..12).map(|t| s.batch(t).unwrap()).collect();
    for workers in [1, 2, 3] {
        let mut loader = Loader::spawn(Arc::clone(&s), 0..12, workers, 2).unwrap();
        let mut got = Vec::new();
        while let Some(b) = loader.next_batch() {
            got.push(b.unwrap());
        }
        assert_eq!(got, direct, "{workers} workers");
    }
    // Resuming at step 5 yields the tail of the uninterrupted sequence.
    let mut loader = Loader::spawn(Arc::clone(&s), 5..12, 2, 1).unwrap();
    let mut tail = Vec::new();
    while let Some(b) = loader.next_batch() {
        tail.push(b.unwrap());
    }
    assert_eq!(tail, direct[5..]);
}

#[test]
fn dropping_a_loader_early_stops_its_threads() {
    let s = sampler(3, 2);
    let mut loader = Loader::spawn(s, 0..1_000_000, 2, 2).unwrap();
    assert!(loader.next_batch().unwrap().is_ok());
    drop(loader); // must return (joins the workers), not hang
}

#[test]
fn an_unreadable_slice_is_reported_with_its_key() {
    let src = Arc::new(source());
    let keys = vec![SliceKey { case: 5, z: 0 }];
    let cfg = SamplerConfig {
        batch_size: 1,
        crop_size: 16,
        fill: -1.0,
        seed: 0,
        augment: AugmentConfig::none(),
    };
    let s = Sampler::new(src, keys, cfg).unwrap();
    let err = s.batch(0).unwrap_err().to_string();
    assert!(err.contains("case #5"), "{err}");
}

#[test]
fn empty_split_is_an_error() {
    let cfg = SamplerConfig {
        batch_size: 1,
        crop_size: 16,
        fill: -1.0,
        seed: 0,
        augment: AugmentConfig::none(),
    };
    assert!(Sampler::new(Arc::new(source()), vec![], cfg).is_err());
}

/// 2.5D input (#16 item 1): with `k` neighbours per side, a batch's middle channel is exactly
/// the one-slice batch (crop, augmentation and all), the other channels are the neighbouring
/// slices under the same crop, clamped at the volume's ends as prediction clamps them.
#[test]
fn context_slices_surround_the_sampled_one_and_clamp_at_the_ends() {
    let plain = sampler(5, 4);
    let src = Arc::new(source());
    let keys = src.keys();
    let stacked = Sampler::new(src, keys, plain.config().clone())
        .unwrap()
        .with_context(2);
    assert_eq!(stacked.channels(), 5);
    for step in [0u64, 3, 11] {
        let (a, b) = (plain.batch(step).unwrap(), stacked.batch(step).unwrap());
        assert_eq!(b.ncct.dim(), (4, 5, 16, 16));
        assert_eq!(a.keys, b.keys);
        assert_eq!(a.ctpa, b.ctpa);
        assert_eq!(a.lung, b.lung);
        assert_eq!(
            b.ncct.slice(ndarray::s![.., 2..3, .., ..]),
            a.ncct,
            "step {step}: the middle channel is the one-slice input"
        );
    }

    // Without augmentation each channel is its slice's crop: pixel values encode (case, z).
    let src = Arc::new(source());
    let keys = src.keys();
    let cfg = SamplerConfig {
        augment: AugmentConfig::none(),
        ..plain.config().clone()
    };
    let s = Sampler::new(src, keys, cfg).unwrap().with_context(2);
    let mut seen_end = false;
    for step in 0..20u64 {
        let b = s.batch(step).unwrap();
        for (i, key) in b.keys.iter().enumerate() {
            let depth = if key.case == 0 { 5 } else { 4 };
            for ch in 0..5 {
                let z = (key.z as isize + ch as isize - 2).clamp(0, depth - 1) as usize;
                let v = b.ncct[[i, ch, 0, 0]];
                let want = (key.case * 10 + z) as f32;
                assert!(
                    (v - want).abs() < 0.5,
                    "case {} z {} channel {ch}: {v}, want slice {z}",
                    key.case,
                    key.z
                );
            }
            seen_end |= key.z == 0 || key.z + 1 == depth as usize;
        }
    }
    assert!(seen_end, "no sample at a volume end was drawn");
}
