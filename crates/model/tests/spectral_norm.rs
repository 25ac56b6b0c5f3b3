//! Spectral norm: convergence to the largest singular value (against an SVD), train/eval
//! behaviour, gradients, and u/v saved and loaded with the VarStore.

use model::config::DiscriminatorConfig;
use model::discriminator::Discriminator;
use model::spectral_norm::SpectralNorm;
use tch::nn::{self, ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn largest_singular_value(w: &Tensor) -> f64 {
    let m = w.reshape([w.size()[0], -1]).to_kind(Kind::Double);
    // LAPACK's SVD, independent of the power iteration under test
    let (_, singular_values, _) = m.svd(true, false);
    singular_values.max().double_value(&[])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn sigma_converges_to_the_largest_singular_value() {
    tch::manual_seed(10);
    let vs = VarStore::new(Device::Cpu);
    let init = nn::Init::Randn {
        mean: 0.0,
        stdev: 1.0,
    };
    for (k, dims) in [[8i64, 4, 4, 4], [1, 16, 4, 4], [32, 2, 4, 4]]
        .iter()
        .enumerate()
    {
        let sn = SpectralNorm::new(&vs.root().sub(k), dims, init, 1e-12);
        let reference = largest_singular_value(sn.weight_orig());
        for _ in 0..500 {
            sn.power_iteration();
        }
        let sigma = sn.sigma().double_value(&[]);
        assert!(
            (sigma - reference).abs() <= 1e-3 * reference,
            "{dims:?}: sigma {sigma} vs SVD {reference}"
        );
        // the normalized weight has spectral norm 1
        let normalized = tch::no_grad(|| sn.weight(false));
        let s = largest_singular_value(&normalized);
        assert!(
            (s - 1.0).abs() <= 1e-3,
            "{dims:?}: normalized weight's largest singular value {s}"
        );
    }
}

#[test]
fn train_forward_iterates_once_and_eval_forward_does_not() {
    tch::manual_seed(11);
    let vs = VarStore::new(Device::Cpu);
    let sn = SpectralNorm::new(
        &vs.root(),
        &[6, 3, 4, 4],
        nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
        1e-12,
    );
    let (u0, v0) = (sn.u().copy(), sn.v().copy());
    let _ = sn.weight(false);
    assert_eq!(max_abs_diff(sn.u(), &u0), 0.0);
    assert_eq!(max_abs_diff(sn.v(), &v0), 0.0);
    let _ = sn.weight(true);
    // one iteration by hand: v = normalize(W^T u0), u = normalize(W v)
    let w = sn.weight_orig().reshape([6, -1]).detach();
    let v1 = w.tr().mv(&u0);
    let v1 = &v1 / v1.norm();
    let u1 = w.mv(&v1);
    let u1 = &u1 / u1.norm();
    assert!(max_abs_diff(sn.v(), &v1) < 1e-6);
    assert!(max_abs_diff(sn.u(), &u1) < 1e-6);
    assert!(max_abs_diff(sn.u(), &u0) > 1e-3, "the iteration moved u");
}

#[test]
fn gradient_reaches_the_weight_but_not_u_and_v() {
    tch::manual_seed(12);
    let vs = VarStore::new(Device::Cpu);
    let sn = SpectralNorm::new(
        &vs.root(),
        &[4, 2, 4, 4],
        nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
        1e-12,
    );
    let loss = (sn.weight(true) * Tensor::randn([4, 2, 4, 4], (Kind::Float, Device::Cpu)))
        .sum(Kind::Float);
    loss.backward();
    assert!(
        sn.weight_orig()
            .grad()
            .abs()
            .sum(Kind::Float)
            .double_value(&[])
            > 0.0
    );
    assert!(!sn.u().requires_grad() && !sn.v().requires_grad());
    // u and v are saved state, not trainable parameters
    assert_eq!(vs.trainable_variables().len(), 1);
    assert_eq!(vs.variables().len(), 3);
}

#[test]
fn u_and_v_are_saved_and_loaded_with_the_weights() {
    tch::manual_seed(13);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    let cfg = DiscriminatorConfig {
        base_channels: 4,
        max_channels: 16,
        ..DiscriminatorConfig::default()
    };
    let x = Tensor::randn([2, 1, 32, 32], (Kind::Float, Device::Cpu));

    let vs = VarStore::new(Device::Cpu);
    let d = Discriminator::new(&vs.root(), &cfg);
    let before: Vec<Tensor> = d.spectral_norms().map(|s| s.u().copy()).collect();
    for _ in 0..3 {
        let _ = tch::no_grad(|| d.forward_t(&x, true));
    }
    // each train forward moved every u (but the last layer's: with one output channel u is
    // the unit scalar 1 or -1); an eval forward moves none
    for (sn, u0) in d.spectral_norms().zip(&before) {
        if u0.size()[0] > 1 {
            assert!(max_abs_diff(sn.u(), u0) > 1e-4);
        }
    }
    let after: Vec<Tensor> = d.spectral_norms().map(|s| s.u().copy()).collect();
    let logits = tch::no_grad(|| d.forward_t(&x, false));
    for (sn, u1) in d.spectral_norms().zip(&after) {
        assert_eq!(max_abs_diff(sn.u(), u1), 0.0);
    }
    vs.save(&path).unwrap();
    let names = Tensor::read_safetensors(&path).unwrap();
    assert!(names.iter().any(|(n, _)| n == "layers.0.conv.weight_u"));
    assert!(names.iter().any(|(n, _)| n == "layers.4.conv.weight_v"));

    tch::manual_seed(14);
    let mut vs2 = VarStore::new(Device::Cpu);
    let d2 = Discriminator::new(&vs2.root(), &cfg);
    assert!(max_abs_diff(&tch::no_grad(|| d2.forward_t(&x, false)), &logits) > 1e-6);
    vs2.load(&path).unwrap();
    for (a, b) in d.spectral_norms().zip(d2.spectral_norms()) {
        assert_eq!(max_abs_diff(a.u(), b.u()), 0.0);
        assert_eq!(max_abs_diff(a.v(), b.v()), 0.0);
    }
    assert_eq!(
        max_abs_diff(&tch::no_grad(|| d2.forward_t(&x, false)), &logits),
        0.0
    );
}
