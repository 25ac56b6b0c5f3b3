//! The R1 penalty (`model::r1`): hand-derived values on discriminators whose input gradient is
//! analytic, the double backward into their weights, and the PyTorch golden on real D configs
//! (`tests/data/r1_*`, made by `tools/golden/r1_torch.py` with
//! `torch.autograd.grad(create_graph=True)`).

mod common;
use common::{data, read};

use model::config::DiscriminatorConfig;
use model::discriminator::Discriminator;
use model::r1::{mean_squared_gradient, R1Config, R1Error};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn value(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    value(&(a - b).abs().max())
}

/// D(x) = conv1x1(x; w, b) on 2 channels: the gradient of sum D with respect to every pixel is
/// w, so E ||grad||^2 = H W |w|^2, and its gradient with respect to w is 2 H W w (and 0 for b).
#[test]
fn linear_1x1_discriminator_by_hand() {
    let (h, w_) = (5i64, 7i64);
    let weight = Tensor::from_slice(&[0.3f32, -1.2])
        .reshape([1, 2, 1, 1])
        .set_requires_grad(true);
    let bias = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
    let x = Tensor::randn([3, 2, h, w_], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let d_out = x.conv2d(&weight, Some(&bias), [1], [0], [1], 1);
    let r1 = mean_squared_gradient(&d_out, &x).unwrap();
    let norm_sq = 0.3f64 * 0.3 + 1.2 * 1.2;
    let expected = (h * w_) as f64 * norm_sq;
    assert!(
        (value(&r1) - expected).abs() < 1e-4 * expected,
        "{} vs {expected}",
        value(&r1)
    );
    // double backward: d r1 / d w = 2 H W w
    r1.backward();
    let g = weight.grad().flatten(0, -1);
    let hw = (h * w_) as f64;
    assert!((g.double_value(&[0]) - 2.0 * hw * 0.3).abs() < 1e-3);
    assert!((g.double_value(&[1]) + 2.0 * hw * 1.2).abs() < 1e-3);
    let gb = bias.grad();
    assert!(!gb.defined() || value(&gb.abs().max()) == 0.0);
}

/// D(x) = sum_p a_p x_p^2: grad = 2 a x, E ||grad||^2 = mean_b sum_p 4 a_p^2 x_bp^2, and
/// d/da_p = 8 a_p mean_b x_bp^2. The penalty depends on the weights through the input
/// gradient itself, which only a create_graph backward gets right.
#[test]
fn quadratic_discriminator_by_hand() {
    let a = Tensor::randn([1, 1, 4, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let x = Tensor::randn([2, 1, 4, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let d_out = (&a * x.square()).sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float);
    let r1 = mean_squared_gradient(&d_out, &x).unwrap();
    let (ad, xd) = (a.detach(), x.detach());
    let expected = (ad.square() * xd.square() * 4.0)
        .sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)
        .mean(Kind::Float);
    assert!((value(&r1) - value(&expected)).abs() < 1e-4 * value(&expected));
    r1.backward();
    let expected_grad = &ad * xd.square().mean_dim(0, true, Kind::Float) * 8.0;
    let diff = max_abs_diff(&a.grad(), &expected_grad);
    assert!(diff < 1e-4, "d r1 / d a off by {diff}");
}

/// Our D and PyTorch's give the same penalty and the same weight gradients of it.
fn check_golden(case: &str) {
    let cfg: DiscriminatorConfig = serde_json::from_str(
        &std::fs::read_to_string(data(&format!("r1_{case}_config.json"))).unwrap(),
    )
    .unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let d = Discriminator::new(&vs.root(), &cfg);
    vs.load(data(&format!("r1_{case}_d.safetensors"))).unwrap();
    let io = read(&format!("r1_{case}_io.safetensors"));
    let real = io["real"].copy().set_requires_grad(true);
    let out = d.forward_t(&d.input(&real, &io["condition"]), true);
    let r1 = mean_squared_gradient(&out, &real).unwrap();
    let golden = value(&io["r1"]);
    assert!(golden > 1.0, "golden penalty too small to test anything");
    assert!(
        (value(&r1) - golden).abs() <= 1e-4 * golden,
        "{case}: r1 {} vs torch {golden}",
        value(&r1)
    );
    r1.backward();
    let vars = vs.variables();
    let mut checked = 0;
    for (key, expected) in io
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n, v)))
    {
        let grad = vars[key].grad();
        let grad = if grad.defined() {
            grad
        } else {
            expected.zeros_like()
        };
        let scale = value(&expected.abs().max()).max(1.0);
        let diff = max_abs_diff(&grad, expected);
        assert!(diff <= 1e-4 * scale, "{case}: d r1 / d {key} off by {diff}");
        checked += 1;
    }
    assert_eq!(
        checked,
        vs.trainable_variables().len(),
        "{case}: every weight"
    );
    // the penalty's gradient really reaches D's first conv
    let first = vars
        .iter()
        .find(|(k, _)| *k == "layers.0.conv.weight_orig" || *k == "layers.0.conv.weight")
        .map(|(_, v)| v.grad())
        .unwrap();
    assert!(value(&first.abs().max()) > 1e-3);
}

#[test]
fn spectral_norm_discriminator_matches_torch_double_backward() {
    check_golden("sn");
}

#[test]
fn plain_conditional_batch_norm_discriminator_matches_torch_double_backward() {
    check_golden("plain");
}

#[test]
fn config_weight_schedule_and_validation() {
    let off = R1Config::default();
    assert!(!off.enabled() && !off.active_at(1) && off.validate().is_ok());
    let every = R1Config {
        gamma: 10.0,
        every: 1,
    };
    assert!(every.active_at(1) && every.active_at(2));
    assert_eq!(every.weight(), 5.0);
    let lazy = R1Config {
        gamma: 10.0,
        every: 16,
    };
    assert!(!lazy.active_at(1) && !lazy.active_at(15) && lazy.active_at(16));
    assert_eq!(lazy.weight(), 80.0);
    for bad in [
        R1Config {
            gamma: -1.0,
            every: 1,
        },
        R1Config {
            gamma: f64::NAN,
            every: 1,
        },
        R1Config {
            gamma: 10.0,
            every: 0,
        },
    ] {
        assert!(matches!(bad.validate(), Err(R1Error::InvalidConfig(_))));
    }
}

#[test]
fn untracked_or_unused_input_is_a_typed_error() {
    let x = Tensor::randn([1, 1, 4, 4], (Kind::Float, Device::Cpu));
    let w = Tensor::ones([1, 1, 1, 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let out = x.conv2d(&w, None::<&Tensor>, [1], [0], [1], 1);
    assert!(matches!(
        mean_squared_gradient(&out, &x),
        Err(R1Error::InputNotTracked)
    ));
    let other = Tensor::randn([1, 1, 4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    assert!(matches!(
        mean_squared_gradient(&out, &other),
        Err(R1Error::NotConnected)
    ));
}
