//! The training step's one read-back: a non-finite term is caught on the device and neither
//! network, nor either optimizer, moves; the statistics read back in one transfer are the
//! ones the host would compute.

mod common;

use common::{fixed_batch, serial, tiny};
use std::collections::HashMap;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};
use train::contrast::QuantileOutside;
use train::nets::{Nets, GENERATOR, REGISTRATION};
use train::step::{train_step, BatchTensors};

/// Every weight of both stores, copied.
fn weights(nets: &Nets) -> HashMap<String, Tensor> {
    let mut all = HashMap::new();
    for (prefix, store) in [("gr", &nets.gr_store), ("d", &nets.d_store)] {
        for (name, t) in store.variables() {
            all.insert(format!("{prefix}/{name}"), t.copy());
        }
    }
    all
}

/// An optimizer's saved state (moments and step counts), read back.
fn adam_state(opt: &model::optim::Adam) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adam.safetensors");
    opt.save(&path).unwrap();
    Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect()
}

fn assert_same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (k, t) in a {
        assert!(t.equal(&b[k]), "{what}: {k} changed");
    }
}

#[test]
fn a_non_finite_term_updates_nothing_and_the_run_can_continue_exactly() {
    let _serial = serial();
    let batch = fixed_batch();
    let mut cfg = tiny(5);
    // D's spectral-norm vectors advance in every training forward, as in PyTorch, failed
    // step or not; without them, *every* variable must be as it was.
    cfg.model.discriminator.spectral_norm = false;
    let mut nan_cfg = cfg.clone();
    nan_cfg.hooks.inject_nan_at_step = Some(2);
    let (mut a, mut b) = (Nets::new(&cfg, Device::Cpu), Nets::new(&cfg, Device::Cpu));
    let (mut oa, mut ob) = (a.optimizers(&cfg).unwrap(), b.optimizers(&cfg).unwrap());
    train_step(&mut a, &mut oa, &batch, &cfg, 1, 1.0, false).unwrap();
    train_step(&mut b, &mut ob, &batch, &cfg, 1, 1.0, false).unwrap();

    let (w, sg, sd) = (weights(&a), adam_state(&oa.gr), adam_state(&oa.d));
    let err = train_step(&mut a, &mut oa, &batch, &nan_cfg, 2, 1.0, true).unwrap_err();
    assert_eq!((err.step, err.term), (2, "total G+R"));
    assert!(err.value.is_nan());
    // G, R and D untouched, both optimizers' moments and counts too
    assert_same(&weights(&a), &w, "weights");
    assert_same(&adam_state(&oa.gr), &sg, "G+R Adam");
    assert_same(&adam_state(&oa.d), &sd, "D Adam");
    assert_eq!((oa.gr.steps(), oa.d.steps()), (1, 1));

    // retried without the NaN, step 2 is the uninterrupted run's step 2, bit for bit
    let sa = train_step(&mut a, &mut oa, &batch, &cfg, 2, 1.0, false).unwrap();
    let sb = train_step(&mut b, &mut ob, &batch, &cfg, 2, 1.0, false).unwrap();
    assert_eq!(sa, sb);
    assert_same(&weights(&a), &weights(&b), "after the retried step");
    assert_same(&adam_state(&oa.gr), &adam_state(&ob.gr), "G+R Adam after");
}

/// Global L2 norm of the gradients of `vars`, on the host.
fn host_norm(vars: &[Tensor]) -> f64 {
    vars.iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .map(|g| {
            g.to_kind(Kind::Double)
                .square()
                .sum(Kind::Double)
                .double_value(&[])
        })
        .sum::<f64>()
        .sqrt()
}

#[test]
fn statistics_read_back_at_once_are_the_hosts() {
    let _serial = serial();
    let batch = fixed_batch();
    let cfg = tiny(5);
    let mut nets = Nets::new(&cfg, Device::Cpu);
    let mut opts = nets.optimizers(&cfg).unwrap();
    let s = train_step(&mut nets, &mut opts, &batch, &cfg, 1, 1.0, true).unwrap();
    // the gradients the updates used are still there until the next step drops them
    // (the step squares in float32 and sums in f64; here both in f64)
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1e-12);
    let g = host_norm(&nets.gr_variables(GENERATOR));
    let r = host_norm(&nets.gr_variables(REGISTRATION));
    let d = host_norm(&nets.d_store.trainable_variables());
    assert!(g > 0.0 && r > 0.0 && d > 0.0);
    assert!(close(s.grad_g, g), "{} vs {g}", s.grad_g);
    assert!(close(s.grad_r, r), "{} vs {r}", s.grad_r);
    assert!(close(s.grad_d, d), "{} vs {d}", s.grad_d);
    // the weighted parts add up to the total, and every logged term is finite and set
    let l = &cfg.loss;
    let expected = l.l1_weight * s.l1
        + l.ssim_weight * s.ssim
        + l.adversarial_weight * s.adv_g
        + l.smoothness_weight * s.smooth;
    assert!((s.loss_g - expected).abs() < 1e-4 * s.loss_g.abs(), "{s:?}");
    assert!(
        s.loss_d > 0.0 && s.flow_max >= s.flow_mean && s.flow_mean > 0.0,
        "{s:?}"
    );
    assert_eq!((opts.gr.steps(), opts.d.steps()), (1, 1));
}

/// #13 item 1: R diverged (a NaN weight, as after `--lr 1e3`), so its flow is NaN: the step
/// neither crashes (libtorch's sampler backward segfaulted, the exact warp panicked) nor moves
/// a weight; it stops naming a non-finite term. Both warps.
#[test]
fn a_diverged_registration_net_stops_the_step_without_a_crash() {
    let _serial = serial();
    let batch = fixed_batch();
    for warp in [
        model::warp::WarpMethod::GridSample,
        model::warp::WarpMethod::Exact,
    ] {
        let mut cfg = tiny(5);
        cfg.model.discriminator.spectral_norm = false;
        cfg.model.registration.warp = warp;
        let mut nets = Nets::new(&cfg, Device::Cpu);
        let mut opts = nets.optimizers(&cfg).unwrap();
        let r_var = nets.gr_variables(REGISTRATION).into_iter().next().unwrap();
        tch::no_grad(|| {
            let _ = r_var.view([-1]).narrow(0, 0, 1).fill_(f64::NAN);
        });
        let before = weights(&nets);
        let err = train_step(&mut nets, &mut opts, &batch, &cfg, 1, 1.0, true).unwrap_err();
        assert!(err.value.is_nan(), "{warp:?}: {err}");
        assert!(
            ["smoothness", "total G+R", "l1", "ssim"].contains(&err.term),
            "{warp:?}: {err}"
        );
        let after = weights(&nets);
        for (k, t) in &before {
            // the NaN weight stays NaN (equal() is false on NaN): compare bit patterns
            let same = t.isnan().equal(&after[k].isnan())
                && t.nan_to_num(0.0, None, None)
                    .equal(&after[k].nan_to_num(0.0, None, None));
            assert!(same, "{warp:?}: {k} changed");
        }
        assert_eq!(opts.gr.steps(), 0, "{warp:?}");
    }
}

/// One step of the tiny model on the fixed batch, from the same initial weights, with `edit`
/// applied to the config.
fn one_step(edit: impl Fn(&mut train::config::TrainConfig)) -> train::step::StepStats {
    one_step_at(1, edit)
}

/// [`one_step`] as step `step` (fresh networks, so only the step's schedules differ).
fn one_step_at(
    step: u64,
    edit: impl Fn(&mut train::config::TrainConfig),
) -> train::step::StepStats {
    one_step_on(fixed_batch(), step, edit)
}

/// [`one_step_at`] on `batch`.
fn one_step_on(
    batch: BatchTensors,
    step: u64,
    edit: impl Fn(&mut train::config::TrainConfig),
) -> train::step::StepStats {
    let mut cfg = tiny(5);
    edit(&mut cfg);
    let mut nets = Nets::new(&cfg, Device::Cpu);
    let mut opts = nets.optimizers(&cfg).unwrap();
    train_step(&mut nets, &mut opts, &batch, &cfg, step, 1.0, false).unwrap()
}

/// A loss term read back as `term` of `on` (weighted `weight`) and 0 in `off`: positive,
/// finite, and the only difference between the two totals.
fn assert_weighted_term(name: &str, off: (f64, f64), on: (f64, f64), weight: f64) {
    let ((off_term, off_total), (term, total)) = (off, on);
    assert_eq!(off_term, 0.0, "{name} off");
    assert!(term > 0.0 && term.is_finite(), "{name}: {term}");
    // same initial weights and batch: the totals differ by exactly the weighted term
    let gap = total - off_total;
    assert!(
        (gap - weight * term).abs() < 1e-4 * total.abs(),
        "{name}: {gap} vs {}",
        weight * term
    );
}

/// `[contrast] weight`: the reconstruction weighs the contrast region more, so the logged L1
/// changes; weight 1 is exactly the plain loss.
#[test]
fn the_contrast_weight_changes_the_reconstruction_only_when_on() {
    let _serial = serial();
    let run = |weight: f64| one_step(|c| c.contrast.weight = weight);
    let (plain, one, heavy) = (run(1.0), run(1.0), run(20.0));
    assert_eq!(plain.l1, one.l1);
    assert!(
        (heavy.l1 - plain.l1).abs() > 1e-6 * plain.l1,
        "contrast weight 20 left the L1 at {} (plain {})",
        heavy.l1,
        plain.l1
    );
}

/// `[contrast] mean_weight`: the region's mean error is read back and enters G+R's total with
/// its weight; off, it is 0 and the total unchanged.
#[test]
fn the_contrast_mean_term_enters_the_loss_with_its_weight() {
    let _serial = serial();
    let run = |w: f64| one_step(|c| c.contrast.mean_weight = w);
    let (off, on) = (run(0.0), run(7.0));
    let pick = |s: &train::step::StepStats| (s.contrast_mean, s.loss_g);
    assert_weighted_term("contrast mean error", pick(&off), pick(&on), 7.0);
}

/// `[contrast] peak_weight`: the peak error is read back and enters G+R's total with its
/// weight; off, it is 0 and the total unchanged.
#[test]
fn the_contrast_peak_term_enters_the_loss_with_its_weight() {
    let _serial = serial();
    let run = |w: f64| one_step(|c| c.contrast.peak_weight = w);
    let (off, on) = (run(0.0), run(6.0));
    let pick = |s: &train::step::StepStats| (s.contrast_peak, s.loss_g);
    assert_weighted_term("contrast peak error", pick(&off), pick(&on), 6.0);
}

/// `[contrast] quantile`: the region's quantile shift is read back (positive: the residual
/// G starts as the identity, and the region is where the CTPA is brighter than the NCCT) and enters G+R's total with `(2q - 1)` times
/// the L1's weight; at 0.5 it is 0 and the total unchanged.
#[test]
fn the_contrast_quantile_enters_the_loss_as_the_pinball_shift() {
    let _serial = serial();
    let run = |q: f64| {
        one_step(|c| {
            c.model.generator.residual = true;
            c.contrast.quantile = q;
        })
    };
    let (off, on) = (run(0.5), run(0.8));
    let l1_weight = tiny(5).loss.l1_weight;
    let pick = |s: &train::step::StepStats| (s.contrast_quantile, s.loss_g);
    let factor = (2.0 * 0.8 - 1.0) * l1_weight;
    assert_weighted_term("contrast quantile shift", pick(&off), pick(&on), factor);
    // with a decay over 2 steps: half the shift's factor at step 2, none from step 3 on
    let decayed = |step: u64, q: f64| {
        one_step_at(step, |c| {
            c.model.generator.residual = true;
            c.contrast.quantile = q;
            c.contrast.quantile_decay_steps = if q == 0.5 { 0 } else { 2 };
        })
    };
    let (off2, half) = (decayed(2, 0.5), decayed(2, 0.8));
    assert_weighted_term("decaying quantile", pick(&off2), pick(&half), factor / 2.0);
    let (off3, done) = (decayed(3, 0.5), decayed(3, 0.8));
    assert_eq!((done.contrast_quantile, done.loss_g), (0.0, off3.loss_g));
    // outside the lungs only the core, or nothing: on the batch with its lungs taken away
    // (the fixture's crops have little contrast outside them) "none" leaves no pixel. The
    // core's pixels are where the CTPA outshines every NCCT pixel near them, so at the
    // identity each adds to the sum; with the CTPA 0.05 (63 HU, under the region's
    // threshold) brighter everywhere, so does every pixel of the ring the region grows by.
    let outside = |o: QuantileOutside| {
        let mut batch = fixed_batch();
        batch.lung = batch.lung.zeros_like();
        batch.y = &batch.y + 0.05;
        one_step_on(batch, 1, |c| {
            c.model.generator.residual = true;
            c.contrast.quantile = 0.8;
            c.contrast.quantile_outside_lungs = o;
        })
        .contrast_quantile
    };
    let [region, core, none] = [
        QuantileOutside::Region,
        QuantileOutside::Core,
        QuantileOutside::None,
    ]
    .map(outside);
    assert_eq!(none, 0.0);
    assert!(
        core > 0.0 && region > 1.1 * core,
        "the core {core}, the whole region {region}"
    );
}

/// `[identity]`: the term is read back (positive, finite) and enters G+R's total with its
/// weight; off, it is 0 and the total is unchanged.
#[test]
fn the_identity_term_enters_the_loss_with_its_weight() {
    let _serial = serial();
    let run = |w: f64| one_step(|c| c.identity.weight = w);
    let (off, on) = (run(0.0), run(5.0));
    let pick = |s: &train::step::StepStats| (s.identity, s.loss_g);
    assert_weighted_term("identity", pick(&off), pick(&on), 5.0);
    // ramped over 4 steps: at step 3, three quarters of the weight
    let ramped = |w: f64| {
        one_step_at(3, |c| {
            c.identity.weight = w;
            c.identity.ramp_steps = if w == 0.0 { 0 } else { 4 };
        })
    };
    let (off3, on3) = (ramped(0.0), ramped(5.0));
    assert_weighted_term("ramped identity", pick(&off3), pick(&on3), 3.75);
}

/// `[identity] drift_weight`: the drift is read back and enters G+R's total with its weight,
/// with or without the identity term itself; off, it is 0 and the total unchanged.
#[test]
fn the_drift_term_enters_the_loss_with_its_weight() {
    let _serial = serial();
    // the plain G (not residual) starts far from its input: the drift is not 0
    let run = |w: f64| {
        one_step(|c| {
            c.identity.drift_weight = w;
            c.identity.drift_px = 4;
        })
    };
    let (off, on) = (run(0.0), run(4.0));
    let pick = |s: &train::step::StepStats| (s.identity_drift, s.loss_g);
    assert_weighted_term("identity drift", pick(&off), pick(&on), 4.0);
}

/// `[identity] spare_lung_above_hu`: lung pixels the NCCT shows bright leave the identity
/// term; a threshold above every pixel spares nothing (the term as without the key), one
/// below the lung's darkest spares the lungs and changes it.
#[test]
fn sparing_lung_structures_changes_the_identity_term_only_when_pixels_are_spared() {
    let _serial = serial();
    let run = |spare: Option<f64>| {
        one_step(|c| {
            c.identity.weight = 5.0;
            c.identity.spare_lung_above_hu = spare;
        })
        .identity
    };
    let (plain, nothing, lungs) = (run(None), run(Some(1e6)), run(Some(-1e6)));
    assert!(plain > 0.0 && plain.is_finite(), "{plain}");
    assert_eq!(nothing, plain);
    assert!(
        lungs.is_finite() && (lungs - plain).abs() > 1e-6 * plain,
        "sparing the lungs left the identity term at {lungs} (plain {plain})"
    );
}

/// R across slices (`model.registration.through_plane`, #16): the batch carries G's inputs for
/// the slices below, at and above (the centre ones are `x`), R gets a gradient, and when the
/// CTPA is the slice above (a pure through-plane shift, which no in-plane field can undo) R
/// learns a positive dz and the reconstruction falls. (The fixture is the same on every
/// slice, so the test draws its own neighbours: `x` mirrored, left-right above and
/// top-bottom below.)
#[test]
fn registration_across_slices_learns_a_through_plane_shift() {
    let _serial = serial();
    let mut cfg = tiny(40);
    cfg.model.registration.through_plane = true;
    cfg.model.generator.residual = true; // G starts as the identity
    cfg.loss.adversarial_weight = 0.0;
    let mut batch = common::fixed_batch_for(&cfg);
    let served = batch.planes.as_ref().expect("planes").shallow_clone();
    let b = batch.x.size()[0];
    assert_eq!(served.size(), vec![3 * b, 1, 32, 32]);
    for k in 0..3 {
        // the fixture's slices are all alike, so each plane is x
        assert!(served.narrow(0, k * b, b).equal(&batch.x), "plane {k}");
    }
    let (below, above) = (batch.x.flip([2]), batch.x.flip([3]));
    assert!(!above.equal(&batch.x) && !below.equal(&batch.x));
    let planes = Tensor::cat(&[&below, &batch.x, &above], 0);
    batch.planes = Some(planes.shallow_clone());
    // the CTPA: the slice above, as it lies
    batch.y = above.copy();
    let mut nets = Nets::new(&cfg, Device::Cpu);
    let mut opts = nets.optimizers(&cfg).unwrap();
    let dz = |nets: &Nets| {
        let _g = tch::no_grad_guard();
        let fakes = nets.g.forward_t(&planes, false).split(b, 0);
        let flow = nets
            .r
            .as_ref()
            .unwrap()
            .forward_t(&Tensor::cat(&fakes, 1), &batch.y, false);
        assert_eq!(flow.size()[1], 3);
        flow.narrow(1, 2, 1).mean(Kind::Float).double_value(&[])
    };
    let dz0 = dz(&nets);
    let mut l1 = Vec::new();
    for step in 1..=40 {
        let s = train_step(&mut nets, &mut opts, &batch, &cfg, step, 1.0, step == 1).unwrap();
        if step == 1 {
            assert!(s.grad_r > 0.0 && s.grad_g > 0.0, "{s:?}");
        }
        l1.push(s.l1);
    }
    let dz1 = dz(&nets);
    let last = train_step(&mut nets, &mut opts, &batch, &cfg, 41, 1.0, false).unwrap();
    assert!(last.flow_z_mean > 0.2, "flow_z_mean {}", last.flow_z_mean);
    eprintln!("dz {dz0:.4} -> {dz1:.4}; l1 {:.4} -> {:.4}", l1[0], l1[39]);
    assert!(dz0.abs() < 0.01, "R starts near the identity: dz {dz0}");
    assert!(dz1 > 0.2, "dz {dz0} -> {dz1}");
    assert!(l1[39] < 0.5 * l1[0], "l1 {} -> {}", l1[0], l1[39]);
}

/// The planes of R across slices are the loader's slices in z order: G's inputs for the slice
/// below, at and above (each a `2k + 1` window for a 2.5D G), along the batch; the centre one
/// is G's input of the plain step, and `x` the middle slice. Without R (`registration = false`)
/// the key is ignored and the loader serves no extra slice.
#[test]
fn across_slices_the_planes_are_the_windows_below_at_and_above() {
    use ndarray::Array4;
    for g_channels in [1i64, 3] {
        let mut cfg = tiny(1);
        cfg.model.generator.in_channels = g_channels;
        cfg.model.registration.through_plane = true;
        let k = train::step::sampler_context(&cfg);
        assert_eq!(k as i64, g_channels / 2 + 1);
        let (b, n, side) = (2usize, 2 * k + 1, 4usize);
        // NCCT channel c (the slice z - k + c) holds c, plus 100 per batch element
        let ncct = Array4::from_shape_fn((b, n, side, side), |(i, c, _, _)| (c + 100 * i) as f32);
        let one = Array4::<f32>::zeros((b, 1, side, side));
        let batch = dataset::sampler::Batch {
            step: 1,
            keys: Vec::new(),
            ncct,
            ctpa: one.clone(),
            lung: one.clone(),
            body: one,
        };
        let t = train::step::BatchTensors::from_batch(&batch, Device::Cpu, &cfg).unwrap();
        let planes = t.planes.as_ref().unwrap();
        assert_eq!(
            planes.size(),
            vec![3 * b as i64, g_channels, side as i64, side as i64]
        );
        for (p, first) in [(0, 0i64), (1, 1), (2, 2)] {
            for i in 0..b as i64 {
                for c in 0..g_channels {
                    let v = planes.double_value(&[p * b as i64 + i, c, 0, 0]);
                    assert_eq!(
                        v,
                        (first + c + 100 * i) as f64,
                        "plane {p}, element {i}, channel {c}"
                    );
                }
            }
        }
        assert_eq!(
            t.x.double_value(&[1, 0, 0, 0]),
            (k + 100) as f64,
            "x is the middle slice"
        );
        assert!(t.g_input().equal(&planes.narrow(0, b as i64, b as i64)));
        // a batch with the wrong number of slices is refused, naming what it needs
        cfg.model.registration.through_plane = false;
        let e = format!(
            "{:#}",
            train::step::BatchTensors::from_batch(&batch, Device::Cpu, &cfg).unwrap_err()
        );
        assert!(e.contains(&format!("need {g_channels}")), "{e}");
        cfg.model.registration.through_plane = true;
        cfg.registration = false;
        assert_eq!(train::step::sampler_context(&cfg) as i64, g_channels / 2);
    }
}

/// A batch without the neighbouring slices for an R that registers across slices (a
/// hand-built batch, as the benchmark's synthetic one) is a named step failure, not a libtorch
/// panic, and no weight moves.
#[test]
fn an_across_slices_r_without_neighbours_is_a_named_failure() {
    let _serial = serial();
    let mut cfg = tiny(1);
    cfg.model.registration.through_plane = true;
    let batch = fixed_batch(); // one slice per sample, no planes
    assert!(batch.planes.is_none());
    let mut nets = Nets::new(&cfg, Device::Cpu);
    let mut opts = nets.optimizers(&cfg).unwrap();
    let before = weights(&nets);
    let err = train_step(&mut nets, &mut opts, &batch, &cfg, 1, 1.0, false).unwrap_err();
    assert!(err.term.contains("across slices"), "{err}");
    let after = weights(&nets);
    assert!(
        before.iter().all(|(k, v)| after[k].equal(v)),
        "a weight moved"
    );
}

#[test]
fn the_registration_lr_factor_scales_rs_updates_only() {
    let _serial = serial();
    let batch = fixed_batch();
    // weights after one step with R's learning rate at `factor` x G's, and the initial ones
    let run = |factor: f64| {
        let mut cfg = tiny(5);
        cfg.optim.registration_lr_factor = factor;
        let mut nets = Nets::new(&cfg, Device::Cpu);
        let mut opts = nets.optimizers(&cfg).unwrap();
        let names: Vec<String> = opts.gr.variable_names().map(String::from).collect();
        for name in &names {
            let expected = if name.starts_with(&format!("{REGISTRATION}.")) {
                factor
            } else {
                1.0
            };
            assert_eq!(opts.gr.lr_factor(name), Some(expected), "{name}");
        }
        let before = weights(&nets);
        train_step(&mut nets, &mut opts, &batch, &cfg, 1, 1.0, false).unwrap();
        (before, weights(&nets))
    };
    let (init, full) = run(1.0);
    let (init_q, quarter) = run(0.25);
    assert_same(&init, &init_q, "initial weights");
    let (mut r_seen, mut g_seen) = (0, 0);
    for (name, w) in &full {
        let moved = w - &init[name];
        let moved_q = &quarter[name] - &init[name];
        if name.starts_with(&format!("gr/{REGISTRATION}.")) {
            // Adam's first step is lr * m / (sqrt(v) + eps) with the same moments: a quarter
            // (to the rounding of weights near 1; a factor of 0.3 would be 5 % of it off)
            let gap = (&moved_q - &moved * 0.25).abs().max().double_value(&[]);
            let size = moved.abs().max().double_value(&[]);
            assert!(size > 1e-5, "{name}: R did not move ({size})");
            assert!(gap <= 1e-2 * size, "{name}: {gap} against {size}");
            r_seen += 1;
        } else if name.starts_with(&format!("gr/{GENERATOR}.")) {
            assert!(moved.equal(&moved_q), "{name}: G's update changed");
            g_seen += 1;
        }
    }
    assert!(
        r_seen > 0 && g_seen > 0,
        "R {r_seen}, G {g_seen} variables compared"
    );
}
