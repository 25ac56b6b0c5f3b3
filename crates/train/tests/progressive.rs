//! Progressive training (`train::phases`) and the R1 penalty in the training step: networks not
//! yet in training stay bitwise untouched (weights, spectral-norm vectors, Adam state), the
//! R1 term is added to D's loss with its weight, and a run killed in the middle of a phase
//! resumes to bitwise-equal losses.

mod common;

use common::{dataset, fixed_batch, new_run, resume_run, serial};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;
use train::config::{TestHooks, TrainConfig};
use train::nets::{Nets, Optimizers};
use train::step::train_step;
use train::trainer::train;

/// Deep copies of every variable of a store (weights and non-trainable state).
fn snapshot(vs: &tch::nn::VarStore, prefix: &str) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

fn unchanged(before: &HashMap<String, Tensor>, vs: &tch::nn::VarStore) -> bool {
    let now = vs.variables();
    assert!(!before.is_empty());
    before.iter().all(|(n, t)| now[n].equal(t))
}

/// The Adam state of the variables under `prefix` as saved: all moments zero and all step
/// counts zero means that optimizer never touched them.
fn adam_untouched(opt: &model::optim::Adam, prefix: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adam.safetensors");
    opt.save(&path).unwrap();
    let mut seen = 0;
    let mut all_zero = true;
    for (name, t) in Tensor::read_safetensors(&path).unwrap() {
        let var = ["exp_avg.", "exp_avg_sq.", "step."]
            .iter()
            .find_map(|p| name.strip_prefix(p));
        if var.is_some_and(|v| v.starts_with(prefix)) {
            seen += 1;
            all_zero &= t.abs().sum(tch::Kind::Double).double_value(&[]) == 0.0;
        }
    }
    assert!(seen > 0, "no Adam entries under {prefix}");
    all_zero
}

fn nets_for(cfg: &TrainConfig) -> (Nets, Optimizers) {
    let nets = Nets::new(cfg, tch::Device::Cpu);
    let opts = nets.optimizers(cfg).unwrap();
    (nets, opts)
}

#[test]
fn networks_join_one_phase_after_the_other_untouched_before() {
    let _serial = serial();
    let batch = fixed_batch();
    let mut cfg = tiny(6);
    cfg.progressive.generator_steps = 2;
    cfg.progressive.registration_steps = 2;
    let (mut nets, mut opts) = nets_for(&cfg);
    let g0 = snapshot(&nets.gr_store, "generator.");
    let r0 = snapshot(&nets.gr_store, "registration.");
    let d0 = snapshot(&nets.d_store, "");

    // phase 1: G alone
    for step in 1..=2 {
        let s = train_step(&mut nets, &mut opts, &batch, &cfg, step, 1.0, true).unwrap();
        assert!(s.l1 > 0.0 && s.grad_g > 0.0, "{s:?}");
        assert_eq!(
            (s.adv_g, s.loss_d, s.smooth, s.flow_max),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert_eq!((s.grad_r, s.grad_d), (0.0, 0.0));
    }
    assert!(!unchanged(&g0, &nets.gr_store), "G trains in phase 1");
    assert!(unchanged(&r0, &nets.gr_store), "R moved in phase 1");
    assert!(adam_untouched(&opts.gr, "registration."));
    assert!(
        unchanged(&d0, &nets.d_store),
        "D (or its u, v) moved in phase 1"
    );
    assert_eq!(opts.d.steps(), 0);

    // phase 2: + R
    for step in 3..=4 {
        let s = train_step(&mut nets, &mut opts, &batch, &cfg, step, 1.0, true).unwrap();
        assert!(s.grad_r > 0.0 && s.smooth > 0.0, "{s:?}");
        assert_eq!((s.adv_g, s.loss_d, s.grad_d), (0.0, 0.0, 0.0));
    }
    assert!(!unchanged(&r0, &nets.gr_store), "R trains in phase 2");
    assert!(!adam_untouched(&opts.gr, "registration."));
    assert!(unchanged(&d0, &nets.d_store), "D moved in phase 2");
    assert!(adam_untouched(&opts.d, ""));

    // phase 3: + D
    let s = train_step(&mut nets, &mut opts, &batch, &cfg, 5, 1.0, true).unwrap();
    assert!(s.adv_g > 0.0 && s.loss_d > 0.0 && s.grad_d > 0.0, "{s:?}");
    assert!(!unchanged(&d0, &nets.d_store));
    assert_eq!(opts.d.steps(), 1);
}

/// The R1 step adds exactly `(gamma / 2) * every * E||grad||^2` to D's loss (G's update
/// before it is the same with and without R1), on the lazy schedule's steps only, with and
/// without spectral norm.
#[test]
fn r1_adds_its_weighted_penalty_on_its_steps() {
    let _serial = serial();
    let batch = fixed_batch();
    for spectral_norm in [true, false] {
        let mut base = tiny(4);
        base.model.discriminator.spectral_norm = spectral_norm;
        let mut with = base.clone();
        with.r1.gamma = 10.0;
        with.r1.every = 2;
        let (mut n0, mut o0) = nets_for(&base);
        let (mut n1, mut o1) = nets_for(&with);
        let a1 = train_step(&mut n0, &mut o0, &batch, &base, 1, 1.0, false).unwrap();
        let b1 = train_step(&mut n1, &mut o1, &batch, &with, 1, 1.0, false).unwrap();
        // step 1 is not an R1 step of `every = 2`: identical steps
        assert_eq!(b1.r1, None);
        assert_eq!(a1.loss_d, b1.loss_d);
        assert_eq!(a1.r1, None);
        let a2 = train_step(&mut n0, &mut o0, &batch, &base, 2, 1.0, false).unwrap();
        let b2 = train_step(&mut n1, &mut o1, &batch, &with, 2, 1.0, false).unwrap();
        let r1 = b2.r1.expect("step 2 is an R1 step");
        assert!(r1 > 0.0);
        assert_eq!(a2.loss_g, b2.loss_g, "G's half of the step is the same");
        let expected = a2.loss_d + 0.5 * 10.0 * 2.0 * r1;
        assert!(
            (b2.loss_d - expected).abs() <= 1e-5 * expected.abs(),
            "sn {spectral_norm}: {} vs {expected}",
            b2.loss_d
        );
    }
}

/// `(step, loss_g, loss_d, l1, adv_g, r1)` of every train event, r1 NaN when null.
fn losses(run: &Path) -> Vec<(u64, f64, f64, f64, f64, Option<f64>)> {
    common::events(run, "train")
        .into_iter()
        .map(|e| {
            (
                e["step"].as_u64().unwrap(),
                e["loss_g"].as_f64().unwrap(),
                e["loss_d"].as_f64().unwrap(),
                e["l1"].as_f64().unwrap(),
                e["adv_g"].as_f64().unwrap(),
                e["r1"].as_f64(),
            )
        })
        .collect()
}

/// A run killed in phase 1 and again in phase 2, resumed each time, equals the uninterrupted
/// run bit for bit; the phase switches are logged once each.
#[test]
fn resume_in_the_middle_of_a_phase_continues_it_exactly() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = tiny(8);
        c.progressive.generator_steps = 3;
        c.progressive.registration_steps = 3;
        c.r1.gamma = 10.0;
        c.r1.every = 2;
        c
    };
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("killed"));
    train(&new_run(cfg(), &data, &a)).unwrap();
    let mut first = cfg();
    first.hooks.stop_after_step = Some(2);
    assert_eq!(train(&new_run(first, &data, &b)).unwrap().steps, 2);
    // the resumed run follows its own saved config; make it stop again in phase 2
    let hooks = TestHooks {
        stop_after_step: Some(5),
        ..Default::default()
    };
    let out = train(&resume_run(&data, &b, hooks)).unwrap();
    assert_eq!((out.started_at, out.steps), (2, 5));
    let out = train(&resume_run(&data, &b, Default::default())).unwrap();
    assert_eq!((out.started_at, out.steps), (5, 8));

    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 8);
    assert_eq!(la, lb);
    // phases as configured: no adversarial term before step 7, R1 only on even D steps
    for (step, _, loss_d, _, adv_g, r1) in &la {
        assert_eq!(*adv_g == 0.0, *step <= 6, "step {step}");
        assert_eq!(*loss_d == 0.0, *step <= 6, "step {step}");
        assert_eq!(r1.is_some(), *step == 8, "step {step}");
    }
    for run in [&a, &b] {
        let phases: Vec<(u64, String)> = common::events(run, "phase")
            .into_iter()
            .map(|e| {
                (
                    e["step"].as_u64().unwrap(),
                    e["phase"].as_str().unwrap().into(),
                )
            })
            .collect();
        let expected: Vec<(u64, String)> = vec![
            (1, "generator".into()),
            (4, "registration".into()),
            (7, "adversarial".into()),
        ];
        assert_eq!(phases, expected, "{}", run.display());
        let log = std::fs::read_to_string(run.join("train.log")).unwrap();
        assert!(
            log.contains("phase registration -> adversarial at step 7"),
            "{log}"
        );
    }
}

/// The ablation arms layer over the demo config and turn on what they say.
#[test]
fn ablation_fragments_layer_over_the_demo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let demo = root.join("configs/demo.toml");
    let arm = |name: &str| {
        let cfg = TrainConfig::load_layered(
            &[
                demo.clone(),
                root.join(format!("configs/ablation/{name}.toml")),
            ],
            "default",
        )
        .unwrap();
        cfg.validate().unwrap();
        cfg
    };
    let r1 = arm("r1");
    assert!(r1.r1.enabled() && r1.r1.gamma == 10.0 && r1.model.discriminator.spectral_norm);
    let attention = arm("attention");
    assert!(attention.model.registration.attention);
    let progressive = arm("progressive");
    let p = &progressive.progressive;
    assert_eq!(progressive.schedule.steps, 1500);
    assert_eq!(p.phase_at(300), train::phases::Phase::Generator);
    assert_eq!(p.phase_at(301), train::phases::Phase::Registration);
    assert_eq!(p.phase_at(601), train::phases::Phase::Adversarial);
}

/// The shared tiny config with checkpoints every step and no validation or samples.
fn tiny(steps: u64) -> TrainConfig {
    let mut c = common::tiny(steps);
    c.data.loader_threads = 1;
    c.log.val_every = 0;
    c.log.sample_every = 0;
    c.log.checkpoint_every = 1;
    c
}
