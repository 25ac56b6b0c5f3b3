//! Our Adam against torch.optim.Adam step for step (goldens from `tools/golden/adam_torch.py`):
//! the `fused` implementation against `torch.optim.Adam(fused=True)`, the `loop` one against
//! torch's single-tensor path; and the exact resume through its saved state.

use std::collections::HashMap;
use std::path::PathBuf;

use model::optim::{Adam, AdamConfig, AdamImpl, OptimError};
use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const NAMES: [&str; 4] = [
    "layer1.bias",
    "layer1.weight",
    "layer2.bias",
    "layer2.weight",
];

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn golden(file: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data_dir().join(file))
        .unwrap()
        .into_iter()
        .collect()
}

/// The golden's two-layer network in a VarStore, with variables named as in torch.
fn network(init: &HashMap<String, Tensor>) -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    for layer in ["layer1", "layer2"] {
        let p = root.sub(layer);
        for part in ["weight", "bias"] {
            let _ = p.var_copy(part, &init[&format!("init.{layer}.{part}")]);
        }
    }
    // A non-trainable variable (like a spectral-norm u vector): Adam must leave it alone.
    let _ = root.sub("layer1").ones_no_train("u", &[4]);
    vs
}

/// The golden's loss: mean((tanh(x W1^T + b1) W2^T + b2 - y)^2).
fn loss(vs: &VarStore, x: &Tensor, y: &Tensor) -> Tensor {
    let v = vs.variables();
    let hidden = (x.matmul(&v["layer1.weight"].tr()) + &v["layer1.bias"]).tanh();
    let pred = hidden.matmul(&v["layer2.weight"].tr()) + &v["layer2.bias"];
    (pred - y).square().mean(Kind::Float)
}

fn train_step(vs: &VarStore, opt: &mut Adam, x: &Tensor, y: &Tensor) {
    opt.zero_grad();
    loss(vs, x, y).backward();
    opt.step();
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn adam_reproduces_torch_step_for_step() {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("adam_torch.json")).unwrap())
            .unwrap();
    assert_eq!(meta["generator"], "tools/golden/adam_torch.py");
    let steps = meta["steps"].as_i64().unwrap();
    // (implementation, golden key prefix, tolerance on parameters). The fused kernel is the
    // one torch runs: bitwise equal to torch on the same CPU (the golden was made on an AVX2
    // machine; on an AVX-512 Xeon torch's own kernels, regenerating it, differ from it by up to
    // 3.6e-7, and ours match that regenerated file bit for bit: checked 2026-12-06), so the
    // committed file is met within the kernels' CPU dependence. The loop folds `value` into a
    // factor (tch's addcmul_/addcdiv_ take none): one more float rounding than torch's
    // single-tensor path.
    let variants = [
        (AdamImpl::Fused, "fused.", 1e-6),
        (AdamImpl::Loop, "", 1e-6),
    ];
    for ((setting, s), (implementation, prefix, tol)) in meta["settings"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|e| variants.iter().map(move |v| (e, *v)))
    {
        let setting = format!("{setting}/{implementation:?}");
        let g = golden(s["file"].as_str().unwrap());
        let vs = network(&g);
        let cfg = AdamConfig {
            lr: s["lr"].as_f64().unwrap(),
            beta1: s["beta1"].as_f64().unwrap(),
            beta2: s["beta2"].as_f64().unwrap(),
            eps: s["eps"].as_f64().unwrap(),
            weight_decay: s["weight_decay"].as_f64().unwrap(),
            implementation,
        };
        let mut opt = Adam::new(&vs, cfg).unwrap();
        assert_eq!(
            opt.variable_names().collect::<Vec<_>>(),
            NAMES,
            "trainable variables only, sorted"
        );
        // torch's second parameter group (layer2.*) at a factor of the lr
        let factor = s["layer2_lr_factor"].as_f64().unwrap();
        if factor != 1.0 {
            assert_eq!(opt.scale_lr("layer2.", factor).unwrap(), 2);
            assert_eq!(opt.lr_factor("layer2.weight"), Some(factor));
            assert_eq!(opt.lr_factor("layer1.weight"), Some(1.0));
        }
        let halve = s["halve_lr_before_step"].as_i64();
        for step in 1..=steps {
            if halve == Some(step) {
                opt.set_lr(cfg.lr / 2.0);
                assert_eq!(opt.lr(), cfg.lr / 2.0);
            }
            train_step(&vs, &mut opt, &g["x"], &g["y"]);
            let vars = vs.variables();
            for name in NAMES {
                let expected = &g[&format!("{prefix}step{step}.{name}")];
                let d = max_abs_diff(&vars[name], expected);
                assert!(
                    d <= tol,
                    "{setting} step {step} {name}: differs from torch by {d}"
                );
                // The parameters really moved (the comparison is not vacuous).
                assert!(max_abs_diff(&vars[name], &g[&format!("init.{name}")]) > 1e-4);
            }
            assert_eq!(
                vars["layer1.u"].sum(Kind::Float).double_value(&[]),
                4.0,
                "non-trainable variable changed"
            );
        }
        assert_eq!(opt.steps(), steps);

        // The saved moments are torch's `exp_avg` / `exp_avg_sq` state.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adam.safetensors");
        opt.save(&path).unwrap();
        let state = golden_from(&path);
        for name in NAMES {
            for moment in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{moment}.{name}");
                let expected = &g[&format!("{prefix}{key}")];
                let scale = expected.abs().max().double_value(&[]).max(1e-12);
                let d = max_abs_diff(&state[&key], expected) / scale;
                assert!(d < 1e-5, "{setting} {key}: relative difference {d}");
            }
            assert_eq!(state[&format!("step.{name}")].int64_value(&[]), steps);
        }
    }
}

fn golden_from(path: &std::path::Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn save_load_resume_is_bitwise_identical() {
    for implementation in [AdamImpl::Fused, AdamImpl::Loop] {
        resume_is_bitwise_identical(implementation);
    }
}

fn resume_is_bitwise_identical(implementation: AdamImpl) {
    let g = golden("adam_torch_reggan.safetensors");
    let cfg = AdamConfig {
        lr: 1e-2,
        implementation,
        ..AdamConfig::default()
    };

    // Five steps straight.
    let vs_a = network(&g);
    let mut opt_a = Adam::new(&vs_a, cfg).unwrap();
    for _ in 0..5 {
        train_step(&vs_a, &mut opt_a, &g["x"], &g["y"]);
    }

    // Three steps, save weights and optimizer, restore both into fresh objects, two more.
    let dir = tempfile::tempdir().unwrap();
    let vs_b = network(&g);
    let mut opt_b = Adam::new(&vs_b, cfg).unwrap();
    for _ in 0..3 {
        train_step(&vs_b, &mut opt_b, &g["x"], &g["y"]);
    }
    opt_b.set_lr(cfg.lr); // unchanged, but exercised
    let weights = dir.path().join("w.safetensors");
    let state = dir.path().join("adam.safetensors");
    vs_b.save(&weights).unwrap();
    opt_b.save(&state).unwrap();
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 2,
        "no temporary file left behind"
    );
    drop(opt_b);

    let mut vs_c = network(&g);
    vs_c.load(&weights).unwrap();
    // A fresh optimizer with another lr: load restores the saved hyperparameters, like torch.
    let mut opt_c = Adam::new(&vs_c, AdamConfig { lr: 0.5, ..cfg }).unwrap();
    opt_c.load(&state).unwrap();
    assert_eq!(opt_c.lr(), cfg.lr);
    assert_eq!(
        opt_c.config().implementation,
        implementation,
        "kept, not state"
    );
    assert_eq!(opt_c.steps(), 3);
    for _ in 0..2 {
        train_step(&vs_c, &mut opt_c, &g["x"], &g["y"]);
    }
    let (va, vc) = (vs_a.variables(), vs_c.variables());
    for name in NAMES {
        assert!(
            va[name].equal(&vc[name]),
            "{implementation:?} {name}: resumed run differs from the straight run"
        );
    }
    // Without the state, the resumed run would differ (the test can fail).
    let mut vs_d = network(&g);
    vs_d.load(&weights).unwrap();
    let mut opt_d = Adam::new(&vs_d, cfg).unwrap();
    for _ in 0..2 {
        train_step(&vs_d, &mut opt_d, &g["x"], &g["y"]);
    }
    assert!(!vs_d.variables()["layer1.weight"].equal(&va["layer1.weight"]));
}

#[test]
fn load_rejects_a_different_variable_set_without_changing_state() {
    let g = golden("adam_torch_reggan.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adam.safetensors");
    let vs = network(&g);
    let mut opt = Adam::new(&vs, AdamConfig::default()).unwrap();
    train_step(&vs, &mut opt, &g["x"], &g["y"]);
    opt.save(&path).unwrap();

    // Another model: one variable more, one renamed.
    let other = VarStore::new(Device::Cpu);
    let _ = other
        .root()
        .sub("layer1")
        .var_copy("weight", &g["init.layer1.weight"]);
    let _ = other
        .root()
        .sub("layer3")
        .var_copy("bias", &g["init.layer2.bias"]);
    let mut opt_other = Adam::new(&other, AdamConfig::default()).unwrap();
    let err = opt_other.load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, OptimError::Mismatch { .. }), "{msg}");
    assert!(msg.contains("adam.safetensors"), "names the file: {msg}");
    assert!(
        msg.contains("layer3.bias") && msg.contains("layer2.weight"),
        "names the variables: {msg}"
    );
    assert_eq!(opt_other.steps(), 0, "a failed load changes nothing");

    // Same names, another shape.
    let shaped = VarStore::new(Device::Cpu);
    for name in NAMES {
        let (layer, part) = name.split_once('.').unwrap();
        let t = if name == "layer2.weight" {
            Tensor::zeros([3, 4], (Kind::Float, Device::Cpu))
        } else {
            g[&format!("init.{name}")].copy()
        };
        let _ = shaped.root().sub(layer).var_copy(part, &t);
    }
    let err = Adam::new(&shaped, AdamConfig::default())
        .unwrap()
        .load(&path)
        .unwrap_err();
    assert!(
        err.to_string().contains("layer2.weight") && err.to_string().contains("shape"),
        "{err}"
    );

    // Not a safetensors file, and a missing file.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    assert!(matches!(opt.load(&junk), Err(OptimError::Torch { .. })));
    assert!(opt.load(dir.path().join("missing.safetensors")).is_err());
    assert_eq!(opt.steps(), 1);
}

#[test]
fn variables_without_gradient_are_skipped_and_config_is_checked() {
    let g = golden("adam_torch_reggan.safetensors");
    let vs = network(&g);
    let mut opt = Adam::new(&vs, AdamConfig::default()).unwrap();
    let before = vs.variables()["layer2.bias"].copy();
    // No backward yet: no gradient anywhere, nothing moves.
    opt.step();
    assert!(vs.variables()["layer2.bias"].equal(&before));

    for bad in [
        AdamConfig {
            lr: -1.0,
            ..AdamConfig::default()
        },
        AdamConfig {
            beta1: 1.0,
            ..AdamConfig::default()
        },
        AdamConfig {
            beta2: -0.1,
            ..AdamConfig::default()
        },
        AdamConfig {
            eps: f64::NAN,
            ..AdamConfig::default()
        },
        AdamConfig {
            weight_decay: -1e-3,
            ..AdamConfig::default()
        },
    ] {
        assert!(
            matches!(Adam::new(&vs, bad), Err(OptimError::InvalidConfig(_))),
            "{bad:?}"
        );
    }
    let d = AdamConfig::default();
    assert_eq!(
        (d.lr, d.beta1, d.beta2, d.eps, d.weight_decay),
        (1e-4, 0.5, 0.999, 1e-8, 0.0)
    );
}

#[test]
fn fused_and_loop_agree_and_share_the_state_format() {
    let g = golden("adam_torch_decay_eps.safetensors");
    let base = AdamConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamConfig::default()
    };
    assert_eq!(base.implementation, AdamImpl::Fused, "the default");
    // Three fused steps, then the state continues in the loop implementation.
    let vs_f = network(&g);
    let mut opt_f = Adam::new(&vs_f, base).unwrap();
    for _ in 0..3 {
        train_step(&vs_f, &mut opt_f, &g["x"], &g["y"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("adam.safetensors");
    opt_f.save(&state).unwrap();
    let loop_cfg = AdamConfig {
        implementation: AdamImpl::Loop,
        ..base
    };
    let mut opt_l = Adam::new(&vs_f, loop_cfg).unwrap();
    opt_l.load(&state).unwrap();
    assert_eq!(opt_l.steps(), 3);
    for _ in 0..2 {
        train_step(&vs_f, &mut opt_l, &g["x"], &g["y"]);
    }
    // Five steps straight with the fused kernel: the same trajectory to float rounding.
    let vs_ref = network(&g);
    let mut opt_ref = Adam::new(&vs_ref, base).unwrap();
    for _ in 0..5 {
        train_step(&vs_ref, &mut opt_ref, &g["x"], &g["y"]);
    }
    let (a, b) = (vs_f.variables(), vs_ref.variables());
    for name in NAMES {
        let d = max_abs_diff(&a[name], &b[name]);
        assert!(d < 1e-6, "{name}: {d}");
        // and the step counts carried over (a restart from step 0 would be far off)
        assert!(max_abs_diff(&a[name], &g[&format!("init.{name}")]) > 1e-3);
    }
    let err = opt_l.try_step();
    assert!(err.is_ok(), "the loop cannot fail: {err:?}");
}

#[test]
fn lr_factor_must_be_positive_and_covers_its_prefix_only() {
    let g = golden("adam_torch_reggan.safetensors");
    let vs = network(&g);
    let mut opt = Adam::new(&vs, AdamConfig::default()).unwrap();
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = opt.scale_lr("layer1.", bad).unwrap_err();
        assert!(
            matches!(&err, OptimError::InvalidConfig(m) if m.contains("layer1.")),
            "{bad}: {err}"
        );
    }
    assert_eq!(
        opt.lr_factor("layer1.bias"),
        Some(1.0),
        "a refused factor is not kept"
    );
    assert_eq!(opt.scale_lr("nothing.", 0.5).unwrap(), 0);
    assert_eq!(opt.scale_lr("layer1.", 0.5).unwrap(), 2);
    assert_eq!(
        opt.lr_factor("layer1.u"),
        None,
        "not trainable: not optimized"
    );
    // a factor is not state: a saved and reloaded optimizer keeps its own
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adam.safetensors");
    train_step(&vs, &mut opt, &g["x"], &g["y"]);
    opt.save(&path).unwrap();
    let mut other = Adam::new(&vs, AdamConfig::default()).unwrap();
    other.load(&path).unwrap();
    assert_eq!(other.lr_factor("layer1.weight"), Some(1.0));
}

#[test]
fn implementation_is_a_config_string() {
    let cfg: AdamConfig = serde_json::from_str(r#"{"implementation": "loop"}"#).unwrap();
    assert_eq!(cfg.implementation, AdamImpl::Loop);
    assert_eq!(cfg.lr, 1e-4);
    assert!(serde_json::from_str::<AdamConfig>(r#"{"implementation": "foreach"}"#).is_err());
}

/// Parameters, moments and per-variable steps of `opt` over `vs`, via its saved state.
fn state_of(vs: &VarStore, opt: &Adam) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adam.safetensors");
    opt.save(&path).unwrap();
    let mut state = golden_from(&path);
    for (name, t) in vs.variables() {
        state.insert(format!("param.{name}"), t.copy());
    }
    state
}

fn assert_same_state(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: different keys");
    for (k, t) in a {
        assert!(t.equal(&b[k]), "{what}: {k} differs");
    }
}

/// A step called off by a device flag changes nothing a later step can see: after
/// `uncount_step`, the run continues bitwise as if the call had never happened; with the flag
/// clear it is exactly `step`. Both implementations.
#[test]
fn step_unless_is_called_off_by_the_flag_without_a_trace() {
    let g = golden("adam_torch_reggan.safetensors");
    for implementation in [AdamImpl::Fused, AdamImpl::Loop] {
        let cfg = AdamConfig {
            lr: 1e-2,
            implementation,
            ..AdamConfig::default()
        };
        let (va, vb) = (network(&g), network(&g));
        let (mut a, mut b) = (Adam::new(&va, cfg).unwrap(), Adam::new(&vb, cfg).unwrap());
        let (clear, set) = (
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            Tensor::ones([1], (Kind::Float, Device::Cpu)),
        );
        // step 1: a with the flag clear, b plainly
        a.zero_grad();
        loss(&va, &g["x"], &g["y"]).backward();
        a.step_unless(&clear);
        train_step(&vb, &mut b, &g["x"], &g["y"]);
        assert_same_state(&state_of(&va, &a), &state_of(&vb, &b), "flag clear");
        // step 2 on a only, called off: nothing moves on the device
        let before = state_of(&va, &a);
        a.zero_grad();
        (loss(&va, &g["x"], &g["y"]) * 7.0).backward();
        a.step_unless(&set);
        a.uncount_step();
        assert_eq!(
            a.steps(),
            1,
            "{implementation:?}: the called-off step still counts"
        );
        assert_same_state(&state_of(&va, &a), &before, "called off");
        // and the next real step is b's second step, bit for bit
        train_step(&va, &mut a, &g["x"], &g["y"]);
        train_step(&vb, &mut b, &g["x"], &g["y"]);
        assert_same_state(
            &state_of(&va, &a),
            &state_of(&vb, &b),
            "after the called-off step",
        );
        assert_eq!(a.steps(), 2);
        // uncount_step after a plain step does nothing
        a.uncount_step();
        assert_eq!(a.steps(), 2);
    }
}

/// zero_grad drops the gradients (torch's set_to_none): they are undefined afterwards, and a
/// variable left without one by the next backward pass is skipped by the step.
#[test]
fn zero_grad_drops_gradients_and_the_step_skips_variables_without_one() {
    let g = golden("adam_torch_reggan.safetensors");
    let vs = network(&g);
    let mut opt = Adam::new(&vs, AdamConfig::default()).unwrap();
    train_step(&vs, &mut opt, &g["x"], &g["y"]);
    opt.zero_grad();
    let vars = vs.variables();
    for name in NAMES {
        assert!(!vars[name].grad().defined(), "{name} kept its gradient");
    }
    // only layer 2 gets a gradient now
    let before = state_of(&vs, &opt);
    let v = vs.variables();
    let out = g["x"].matmul(&v["layer2.weight"].narrow(1, 0, 3).tr()) + &v["layer2.bias"];
    out.square().mean(Kind::Float).backward();
    opt.step();
    let after = state_of(&vs, &opt);
    for name in ["layer1.weight", "layer1.bias"] {
        for key in [
            format!("param.{name}"),
            format!("exp_avg.{name}"),
            format!("step.{name}"),
        ] {
            assert!(
                after[&key].equal(&before[&key]),
                "{key} moved without a gradient"
            );
        }
    }
    assert!(!after["param.layer2.bias"].equal(&before["param.layer2.bias"]));
    assert_eq!(after["step.layer2.bias"].int64_value(&[]), 2);
}
