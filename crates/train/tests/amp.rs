//! Mixed precision in the training step (`train::amp`), on the CPU: the f16 loss scaler inside
//! `train_step` (exactness of power-of-two scaling, skipped steps on overflow, back-off, its
//! state through a checkpoint and an exact continuation), bf16 autocast of the forward passes,
//! and the start-up refusal of reduced precision on the CPU. (CUDA autocast itself needs a
//! GPU: not exercised here.)

mod common;

use common::{fixed_batch, serial};
use tch::Tensor;
use train::amp::{LossScaler, Precision, ScalerParams, SCALER_FILE};
use train::checkpoint::{self, TrainState};
use train::config::TrainConfig;
use train::nets::{Nets, Optimizers};
use train::run_dir::RunDir;
use train::step::{train_step, BatchTensors, StepStats};

/// The shared tiny config, amp off (the CPU requires it).
fn tiny() -> TrainConfig {
    common::tiny(TrainConfig::default().schedule.steps)
}

/// Networks and optimizers of `cfg` (amp off, as the CPU requires) with `scaler` in place.
fn nets_with(cfg: &TrainConfig, scaler: LossScaler) -> (Nets, Optimizers) {
    let nets = Nets::new(cfg, tch::Device::Cpu);
    let mut opts = nets.optimizers(cfg).unwrap();
    opts.scaler = scaler;
    (nets, opts)
}

fn run(
    nets: &mut Nets,
    opts: &mut Optimizers,
    cfg: &TrainConfig,
    batch: &BatchTensors,
    steps: std::ops::RangeInclusive<u64>,
) -> Vec<StepStats> {
    steps
        .map(|s| train_step(nets, opts, batch, cfg, s, 1.0, true).unwrap())
        .collect()
}

fn all_equal(a: &Nets, b: &Nets) -> bool {
    let (ga, gb) = (a.gr_store.variables(), b.gr_store.variables());
    let (da, db) = (a.d_store.variables(), b.d_store.variables());
    ga.iter().all(|(n, t)| gb[n].equal(t)) && da.iter().all(|(n, t)| db[n].equal(t))
}

fn f16_scaler() -> LossScaler {
    LossScaler::new(Precision::F16)
}

#[test]
fn power_of_two_loss_scaling_leaves_the_fp32_step_bitwise_unchanged() {
    let _serial = serial();
    let batch = fixed_batch();
    let cfg = tiny();
    let (mut plain, mut plain_opts) = nets_with(&cfg, LossScaler::new(Precision::Fp32));
    let (mut scaled, mut scaled_opts) = nets_with(&cfg, f16_scaler());
    let a = run(&mut plain, &mut plain_opts, &cfg, &batch, 1..=2);
    let b = run(&mut scaled, &mut scaled_opts, &cfg, &batch, 1..=2);
    // Scaling by 2^16 and unscaling are exact in fp32 (no overflow at these magnitudes), so
    // the scaler changes nothing but the scale bookkeeping.
    assert_eq!(a, b, "losses and (unscaled) gradient norms");
    assert!(all_equal(&plain, &scaled));
    assert!(a[0].grad_g > 0.0 && a[0].grad_d > 0.0);
    assert_eq!(scaled_opts.scaler.scale(), 65536.0);
    assert_eq!(scaled_opts.scaler.state().growth_tracker, 2);
    assert_eq!(scaled_opts.scaler.skipped(), 0);
    assert_eq!(scaled_opts.gr.steps(), 2);
}

#[test]
fn overflowing_gradients_skip_both_updates_and_back_off_the_scale() {
    let _serial = serial();
    let batch = fixed_batch();
    let cfg = tiny();
    // A scale at the top of f32's range: every scaled gradient overflows.
    let huge = ScalerParams {
        init_scale: f32::MAX as f64,
        ..ScalerParams::default()
    };
    let (mut nets, mut opts) = nets_with(&cfg, LossScaler::with_params(true, huge));
    let (before, _) = nets_with(&cfg, LossScaler::new(Precision::Fp32));
    assert!(
        all_equal(&nets, &before),
        "same seed, same initial networks"
    );
    let d_u_before: Vec<Tensor> = spectral_vectors(&nets);
    let stats = run(&mut nets, &mut opts, &cfg, &batch, 1..=1);
    assert!(stats[0].loss_g.is_finite(), "the loss itself is fine");
    assert!(
        all_weights_equal(&nets, &before),
        "no optimizer step was applied"
    );
    assert_eq!((opts.gr.steps(), opts.d.steps()), (0, 0));
    assert_eq!(opts.scaler.scale(), f32::MAX as f64 / 2.0);
    assert_eq!(opts.scaler.skipped(), 2, "G+R and D each skipped");
    // The spectral-norm power iteration (a forward effect, not an update) still ran.
    assert!(d_u_before
        .iter()
        .zip(spectral_vectors(&nets))
        .any(|(a, b)| !a.equal(&b)));
    // Back off until the gradients fit: steps resume.
    let mut steps = 1;
    while opts.gr.steps() == 0 {
        steps += 1;
        assert!(steps < 40, "the scale never came down");
        run(&mut nets, &mut opts, &cfg, &batch, steps..=steps);
    }
    assert!(opts.scaler.scale() <= f32::MAX as f64 / 2.0);
}

/// Trainable variables only (weights), compared bitwise.
fn all_weights_equal(a: &Nets, b: &Nets) -> bool {
    let eq = |x: &tch::nn::VarStore, y: &tch::nn::VarStore| {
        let yv = y.variables();
        let trainable = x.trainable_variables();
        x.variables()
            .iter()
            .filter(|(_, t)| trainable.iter().any(|v| v.is_set_to(t)))
            .all(|(n, t)| yv[n].equal(t))
    };
    eq(&a.gr_store, &b.gr_store) && eq(&a.d_store, &b.d_store)
}

fn spectral_vectors(n: &Nets) -> Vec<Tensor> {
    let trainable = n.d_store.trainable_variables();
    n.d_store
        .variables()
        .into_values()
        .filter(|t| !trainable.iter().any(|v| v.is_set_to(t)))
        .map(|t| t.copy())
        .collect()
}

#[test]
fn scaler_state_travels_with_the_checkpoint_and_the_continuation_is_exact() {
    let _serial = serial();
    let batch = fixed_batch();
    let cfg = tiny();
    let params = ScalerParams {
        growth_interval: 2,
        ..ScalerParams::default()
    };
    // Straight: 3 steps.
    let (mut a, mut a_opts) = nets_with(&cfg, LossScaler::with_params(true, params));
    let straight = run(&mut a, &mut a_opts, &cfg, &batch, 1..=3);
    // 2 steps, checkpoint, restore into fresh objects, 1 more.
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = RunDir::create_new(&tmp.path().join("run")).unwrap();
    let (mut b, mut b_opts) = nets_with(&cfg, LossScaler::with_params(true, params));
    let first = run(&mut b, &mut b_opts, &cfg, &batch, 1..=2);
    assert_eq!(
        b_opts.scaler.scale(),
        65536.0 * 2.0,
        "grew once after 2 clean steps"
    );
    let state = TrainState::new(&cfg, 2, 0.0, None);
    let dir = checkpoint::save(&run_dir, "latest", &b, &b_opts, &state).unwrap();
    assert!(dir.join(SCALER_FILE).is_file());
    let (mut c, mut c_opts) = nets_with(&cfg, LossScaler::with_params(true, params));
    checkpoint::restore(&dir, &mut c, &mut c_opts).unwrap();
    assert_eq!(c_opts.scaler.state(), b_opts.scaler.state());
    let rest = run(&mut c, &mut c_opts, &cfg, &batch, 3..=3);
    assert_eq!([first, rest].concat(), straight, "bitwise-equal losses");
    assert!(all_equal(&a, &c));
    assert_eq!(c_opts.scaler.state(), a_opts.scaler.state());

    // An fp32 run cannot silently resume the f16 checkpoint (and vice versa).
    let (mut d, mut d_opts) = nets_with(&cfg, LossScaler::new(Precision::Fp32));
    let err = checkpoint::restore(&dir, &mut d, &mut d_opts).unwrap_err();
    assert!(format!("{err:#}").contains(SCALER_FILE), "{err:#}");
}

#[test]
fn bf16_autocast_runs_the_step_close_to_fp32() {
    let _serial = serial();
    let batch = fixed_batch();
    let cfg = tiny();
    let (mut fp32, mut fp32_opts) = nets_with(&cfg, LossScaler::new(Precision::Fp32));
    let (mut bf16, mut bf16_opts) = nets_with(&cfg, LossScaler::new(Precision::Bf16));
    let mut bf16_cfg = cfg.clone();
    // (the CPU refuses bf16 at start-up; train_step itself runs it, which tests the wiring)
    bf16_cfg.amp = Precision::Bf16;
    let a = run(&mut fp32, &mut fp32_opts, &cfg, &batch, 1..=1);
    let b = run(&mut bf16, &mut bf16_opts, &bf16_cfg, &batch, 1..=1);
    for (x, y) in a.iter().zip(&b) {
        let rel = (x.loss_g - y.loss_g).abs() / x.loss_g.abs();
        assert!(rel < 0.05, "G loss {} vs {} in bf16", x.loss_g, y.loss_g);
        assert!(x.loss_g != y.loss_g, "bf16 really ran (rounding differs)");
    }
    // Master weights and moments stay fp32.
    for (_, v) in bf16.gr_store.variables() {
        assert_eq!(v.kind(), tch::Kind::Float);
    }
}

#[test]
fn reduced_precision_on_the_cpu_is_a_start_up_error() {
    let _serial = serial();
    for (mode, text) in [(Precision::Bf16, "bf16"), (Precision::F16, "f16")] {
        let mut cfg = tiny();
        cfg.amp = mode;
        let nets = Nets::new(&cfg, tch::Device::Cpu);
        let err = nets.optimizers(&cfg).unwrap_err().to_string();
        assert!(err.contains(text) && err.contains("CUDA"), "{err}");
    }
    // The config key parses and defaults to off.
    let cfg = TrainConfig::from_toml_str("amp = \"f16\"\n", "tiny").unwrap();
    assert_eq!(cfg.amp, Precision::F16);
    assert_eq!(TrainConfig::default().amp, Precision::Fp32);
    assert!(TrainConfig::from_toml_str("amp = \"fp8\"\n", "tiny").is_err());
}
