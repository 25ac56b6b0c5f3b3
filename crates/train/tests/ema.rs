//! #16 item 2: the EMA of G's weights: starts at G, follows `ema = d * ema + (1 - d) * G`
//! after each step, lives in every checkpoint, continues exactly on a resume, and is what
//! validation and inference use.

mod common;

use std::path::Path;
use tch::Kind;
use train::nets::{Nets, GENERATOR};

fn named(vs: &tch::nn::VarStore, prefix: &str) -> Vec<(String, tch::Tensor)> {
    let mut v: Vec<_> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn the_ema_starts_at_g_and_follows_the_closed_form() {
    let mut cfg = common::tiny(1);
    cfg.ema.decay = 0.9;
    let nets = Nets::new(&cfg, tch::Device::Cpu);
    let ema = nets.ema.as_ref().unwrap();
    let g0 = named(&nets.gr_store, GENERATOR);
    let e0 = named(&ema.store, GENERATOR);
    assert_eq!(g0.len(), e0.len());
    let initial: Vec<tch::Tensor> = e0.iter().map(|(_, t)| t.copy()).collect();
    for ((a, ga), (b, eb)) in g0.iter().zip(&e0) {
        assert_eq!(a, b);
        assert!(ga.equal(eb), "{a}: the EMA starts at G");
    }
    // G jumps to a constant; after k updates the EMA is 0.9^k * w0 + (1 - 0.9^k) * c
    {
        let _g = tch::no_grad_guard();
        for (_, mut t) in named(&nets.gr_store, GENERATOR) {
            let _ = t.fill_(0.25);
        }
    }
    for _ in 0..5 {
        ema.update(&nets.gr_store);
    }
    let k = 0.9f64.powi(5);
    for ((name, e), w0) in named(&ema.store, GENERATOR).iter().zip(&initial) {
        let want = w0 * k + 0.25 * (1.0 - k);
        let err = (e - want).abs().max().double_value(&[]);
        assert!(err < 1e-6, "{name}: {err}");
    }
    assert_eq!(e0[0].1.kind(), Kind::Float);
}

/// A run stopped after step 4 (checkpoint at 3) and resumed ends with the EMA of the
/// uninterrupted run, bit for bit; the EMA differs from G; inference loads the EMA.
#[test]
fn a_resumed_run_continues_the_ema_exactly_and_inference_uses_it() {
    let _serial = common::serial();
    let data = common::dataset();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = common::tiny(6);
        c.ema.decay = 0.5;
        c
    };
    let (straight, stopped) = (tmp.path().join("straight"), tmp.path().join("stopped"));
    train::train(&common::new_run(cfg(), &data, &straight)).unwrap();
    let mut c = cfg();
    c.hooks.stop_after_step = Some(4);
    train::train(&common::new_run(c, &data, &stopped)).unwrap();
    train::train(&common::resume_run(&data, &stopped, Default::default())).unwrap();
    let file = |run: &Path, f: &str| std::fs::read(run.join("checkpoints/final").join(f)).unwrap();
    assert_eq!(
        file(&straight, "generator_ema.safetensors"),
        file(&stopped, "generator_ema.safetensors"),
        "the resumed EMA equals the uninterrupted one"
    );
    assert_ne!(
        file(&straight, "generator_ema.safetensors"),
        file(&straight, "generator.safetensors"),
        "the EMA is not G"
    );
    let loaded = infer::checkpoint::load_generator(&straight, tch::Device::Cpu).unwrap();
    assert!(loaded.ema);
    let saved: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(straight.join("checkpoints/final/generator_ema.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for (name, t) in loaded.store.variables() {
        assert!(t.equal(&saved[&name]), "{name}: inference loads the EMA");
    }
}

/// A run that keeps an EMA refuses to resume from a checkpoint without one, naming the file.
#[test]
fn a_checkpoint_without_the_ema_is_refused_on_resume() {
    let _serial = common::serial();
    let data = common::dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut c = common::tiny(6);
    c.ema.decay = 0.5;
    c.hooks.stop_after_step = Some(4);
    train::train(&common::new_run(c, &data, &run)).unwrap();
    let latest = run.join("checkpoints/latest");
    std::fs::remove_file(latest.join("generator_ema.safetensors")).unwrap();
    // keep the checksums consistent, so the missing file is what is reported
    let sums = latest.join("checksums.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&sums).unwrap()).unwrap();
    if let Some(files) = v.get_mut("sha256").and_then(|f| f.as_object_mut()) {
        files.remove("generator_ema.safetensors");
    }
    std::fs::write(&sums, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = format!(
        "{:#}",
        train::train(&common::resume_run(&data, &run, Default::default())).unwrap_err()
    );
    assert!(e.contains("generator_ema.safetensors"), "{e}");
}
