//! The losses against hand-computed values on tiny tensors and against goldens made by
//! `tools/golden/losses_torch.py` (PyTorch's loss modules; scikit-image's SSIM map).

use std::collections::HashMap;
use std::path::PathBuf;

use metrics::SsimParams;
use model::losses::{
    discriminator_adversarial, generator_adversarial, lung_weights, reconstruction,
    reconstruction_floored, smoothness, AdversarialKind, LossConfig, LossError, MAX_SCALES,
};
use model::ssim::{ssim, weighted_ssim};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const KINDS: [AdversarialKind; 3] = [
    AdversarialKind::Lsgan,
    AdversarialKind::Hinge,
    AdversarialKind::Bce,
];

fn v(t: &Tensor) -> f64 {
    t.double_value(&[])
}

fn t4(values: &[f64], shape: [i64; 4]) -> Tensor {
    Tensor::from_slice(values).view(shape).to_kind(Kind::Double)
}

fn is_finite(t: &Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) == 1
}

struct Golden {
    values: HashMap<String, f64>,
    tensors: HashMap<String, Tensor>,
}

fn golden() -> Golden {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("losses_torch.json")).unwrap()).unwrap();
    assert_eq!(meta["generator"], "tools/golden/losses_torch.py");
    let values = meta["values"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, x)| (k.clone(), x.as_f64().unwrap()))
        .collect();
    let tensors = Tensor::read_safetensors(dir.join("losses_torch.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    Golden { values, tensors }
}

// ---------------------------------------------------------------- adversarial

#[test]
fn adversarial_losses_match_hand_computed_values() {
    let real = t4(&[1.0, 1.0, 0.0, 2.0], [1, 1, 2, 2]);
    let fake = t4(&[0.0, 1.0, 2.0, -1.0], [1, 1, 2, 2]);
    // LSGAN: G mean((f-1)^2) = (1+0+1+4)/4; D mean((r-1)^2) + mean(f^2) = 0.5 + 1.5.
    assert_eq!(
        v(&generator_adversarial(AdversarialKind::Lsgan, &fake)),
        1.5
    );
    assert_eq!(
        v(&discriminator_adversarial(
            AdversarialKind::Lsgan,
            &real,
            &fake
        )),
        2.0
    );
    // Hinge: G -mean(f) = -0.5; D mean(relu(1-r)) + mean(relu(1+f)) = 0.25 + 1.5.
    assert_eq!(
        v(&generator_adversarial(AdversarialKind::Hinge, &fake)),
        -0.5
    );
    assert_eq!(
        v(&discriminator_adversarial(
            AdversarialKind::Hinge,
            &real,
            &fake
        )),
        1.75
    );
    // BCE with logits: -log(sigmoid(x)) = ln(1 + e^-x) against 1, ln(1 + e^x) against 0.
    let softplus = |x: f64| (1.0 + x.exp()).ln();
    let g: f64 = [0.0, 1.0, 2.0, -1.0]
        .iter()
        .map(|&f| softplus(-f))
        .sum::<f64>()
        / 4.0;
    let d: f64 = [1.0, 1.0, 0.0, 2.0]
        .iter()
        .map(|&r| softplus(-r))
        .sum::<f64>()
        / 4.0
        + [0.0, 1.0, 2.0, -1.0]
            .iter()
            .map(|&f| softplus(f))
            .sum::<f64>()
            / 4.0;
    assert!((v(&generator_adversarial(AdversarialKind::Bce, &fake)) - g).abs() < 1e-12);
    assert!(
        (v(&discriminator_adversarial(
            AdversarialKind::Bce,
            &real,
            &fake
        )) - d)
            .abs()
            < 1e-12
    );
}

#[test]
fn adversarial_losses_match_pytorch_loss_modules() {
    let gold = golden();
    let (real, fake) = (&gold.tensors["d_real"], &gold.tensors["d_fake"]);
    for (kind, tag) in [
        (AdversarialKind::Lsgan, "lsgan"),
        (AdversarialKind::Bce, "bce"),
        (AdversarialKind::Hinge, "hinge"),
    ] {
        let g = generator_adversarial(kind, fake);
        let d = discriminator_adversarial(kind, real, fake);
        assert_eq!((g.kind(), g.dim(), d.dim()), (Kind::Float, 0, 0));
        let (eg, ed) = (
            gold.values[&format!("{tag}_g")],
            gold.values[&format!("{tag}_d")],
        );
        assert!(
            (v(&g) - eg).abs() < 1e-6 * eg.abs().max(1.0),
            "{tag} G: {} vs {eg}",
            v(&g)
        );
        assert!(
            (v(&d) - ed).abs() < 1e-6 * ed.abs().max(1.0),
            "{tag} D: {} vs {ed}",
            v(&d)
        );
    }
}

#[test]
fn adversarial_gradients_are_finite_and_point_the_right_way() {
    for kind in KINDS {
        // Real logits below 1 and fake ones above 0: every formulation still has work to do.
        let real =
            (Tensor::rand([2, 1, 5, 5], (Kind::Float, Device::Cpu)) * 0.9).set_requires_grad(true);
        let fake =
            (Tensor::rand([2, 1, 5, 5], (Kind::Float, Device::Cpu)) + 0.1).set_requires_grad(true);
        discriminator_adversarial(kind, &real, &fake).backward();
        assert!(
            is_finite(&real.grad()) && is_finite(&fake.grad()),
            "{kind:?}"
        );
        // D descends: raising real logits and lowering fake ones must not increase its loss.
        assert!(v(&real.grad().sum(Kind::Float)) <= 0.0, "{kind:?}");
        assert!(v(&fake.grad().sum(Kind::Float)) >= 0.0, "{kind:?}");
        let fake_g =
            Tensor::randn([2, 1, 5, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        generator_adversarial(kind, &fake_g).backward();
        assert!(is_finite(&fake_g.grad()), "{kind:?}");
    }
}

#[test]
fn adversarial_kind_serde_is_lowercase_and_lsgan_by_default() {
    assert_eq!(AdversarialKind::default(), AdversarialKind::Lsgan);
    for (kind, name) in KINDS.iter().zip(["\"lsgan\"", "\"hinge\"", "\"bce\""]) {
        assert_eq!(serde_json::to_string(kind).unwrap(), name);
        assert_eq!(
            serde_json::from_str::<AdversarialKind>(name).unwrap(),
            *kind
        );
    }
    assert!(serde_json::from_str::<AdversarialKind>("\"wgan\"").is_err());
}

// ---------------------------------------------------------------- smoothness

#[test]
fn smoothness_matches_hand_computed_values_and_pytorch() {
    // Channel 0 ramps by 1 along x, channel 1 is constant: dx^2 is 1 on half of the
    // [1, 2, 3, 2] differences, dy is 0: mean(dx^2) + mean(dy^2) = 0.5.
    let ramp = [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0];
    let flow = t4(&[ramp.as_slice(), &[3.0; 9]].concat(), [1, 2, 3, 3]);
    assert_eq!(v(&smoothness(&flow).unwrap()), 0.5);
    // The same field transposed moves the energy to dy: the terms add, not average.
    let both = &flow + flow.transpose(2, 3);
    assert_eq!(v(&smoothness(&both).unwrap()), 1.0);
    let constant = Tensor::full([2, 2, 4, 5], 3.5, (Kind::Float, Device::Cpu));
    assert_eq!(v(&smoothness(&constant).unwrap()), 0.0);

    let gold = golden();
    let got = v(&smoothness(&gold.tensors["flow"]).unwrap());
    let expected = gold.values["smoothness"];
    assert!(
        (got - expected).abs() < 1e-6 * expected,
        "{got} vs {expected}"
    );
}

#[test]
fn smoothness_gradient_is_finite_and_bad_shapes_are_errors() {
    let flow = Tensor::randn([1, 2, 6, 7], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    smoothness(&flow).unwrap().backward();
    assert!(is_finite(&flow.grad()));
    for shape in [vec![2i64, 6, 7], vec![1, 2, 1, 7], vec![1, 2, 6, 1]] {
        let t = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
        assert!(
            matches!(smoothness(&t), Err(LossError::Shape { .. })),
            "{shape:?}"
        );
    }
}

// ---------------------------------------------------------------- reconstruction

fn cfg(lung_weight: f64) -> LossConfig {
    LossConfig {
        lung_weight,
        ..LossConfig::default()
    }
}

/// A 16x16 pair (SSIM needs 11x11): target zeros, prediction zeros with chosen errors.
fn pair_16(errors: &[(i64, i64, f64)]) -> (Tensor, Tensor) {
    let target = Tensor::zeros([1, 1, 16, 16], (Kind::Double, Device::Cpu));
    let pred = target.copy();
    for &(y, x, e) in errors {
        let _ = pred.get(0).get(0).get(y).get(x).fill_(e);
    }
    (pred, target)
}

/// A mask with the 4x4 block at rows 4..8, columns 4..8 inside the lung (16 pixels).
fn block_mask() -> Tensor {
    let m = Tensor::zeros([1, 1, 16, 16], (Kind::Double, Device::Cpu));
    let _ = m.narrow(2, 4, 4).narrow(3, 4, 4).fill_(1.0);
    m
}

#[test]
fn lung_weighted_l1_matches_hand_computed_values() {
    let mask = block_mask();
    // One error of 1.0 inside the lung: weights sum to 240 * 1 + 16 * 10 = 400.
    let (pred, target) = pair_16(&[(5, 5, 1.0)]);
    let r = reconstruction(&pred, &target, &mask, &cfg(10.0)).unwrap();
    assert!((v(&r.l1) - 10.0 / 400.0).abs() < 1e-15, "{}", v(&r.l1));
    // The same error outside the lung weighs 1.
    let (pred, target) = pair_16(&[(12, 12, 1.0)]);
    let r = reconstruction(&pred, &target, &mask, &cfg(10.0)).unwrap();
    assert!((v(&r.l1) - 1.0 / 400.0).abs() < 1e-15);
    // Errors of 0.5 on the whole lung block: 16 * 10 * 0.5 / 400 = 0.2 (vs 8 / 256 unweighted).
    let pred = &mask * 0.5;
    let r = reconstruction(&pred, &Tensor::zeros_like(&pred), &mask, &cfg(10.0)).unwrap();
    assert!((v(&r.l1) - 0.2).abs() < 1e-15);
    let r1 = reconstruction(&pred, &Tensor::zeros_like(&pred), &mask, &cfg(1.0)).unwrap();
    assert!((v(&r1.l1) - 8.0 / 256.0).abs() < 1e-15);
    // The weights themselves.
    let w = lung_weights(&mask, 10.0);
    assert_eq!(v(&w.sum(Kind::Double)), 400.0);
    assert_eq!(w.kind(), Kind::Float);
}

/// A weight floor of `w` on a region weighs it exactly as a lung mask of weight `w` would
/// (max(1, w * r) = 1 + (w - 1) * r for a 0/1 region), at every level; `None` is the plain loss.
#[test]
fn a_weight_floor_weighs_its_region_like_the_lung_weight() {
    tch::manual_seed(11);
    let target = Tensor::rand([2, 1, 32, 32], (Kind::Double, Device::Cpu)) * 2.0 - 1.0;
    let pred = (&target + Tensor::randn([2, 1, 32, 32], (Kind::Double, Device::Cpu)) * 0.2)
        .clamp(-1.0, 1.0);
    let region = block_mask().repeat([2, 1, 2, 2]);
    let zeros = Tensor::zeros_like(&region);
    let mut c = cfg(10.0);
    c.scale_weights = vec![1.0, 0.5];
    let as_lung = reconstruction(&pred, &target, &region, &c).unwrap();
    let floor = &region * 10.0;
    let floored = reconstruction_floored(&pred, &target, &zeros, Some(&floor), &c).unwrap();
    assert!((v(&as_lung.l1) - v(&floored.l1)).abs() < 1e-14);
    assert!((v(&as_lung.ssim) - v(&floored.ssim)).abs() < 1e-14);
    let plain = reconstruction(&pred, &target, &zeros, &c).unwrap();
    let none = reconstruction_floored(&pred, &target, &zeros, None, &c).unwrap();
    assert_eq!(v(&plain.total), v(&none.total));
    assert!((v(&plain.l1) - v(&floored.l1)).abs() > 1e-6);
    // a floor of another shape is refused
    let wrong = Tensor::zeros([2, 1, 16, 16], (Kind::Double, Device::Cpu));
    assert!(reconstruction_floored(&pred, &target, &zeros, Some(&wrong), &c).is_err());
}

#[test]
fn empty_mask_gives_the_plain_l1_and_ssim() {
    tch::manual_seed(3);
    let target = Tensor::rand([2, 1, 24, 20], (Kind::Double, Device::Cpu)) * 2.0 - 1.0;
    let pred = (&target + Tensor::randn([2, 1, 24, 20], (Kind::Double, Device::Cpu)) * 0.1)
        .clamp(-1.0, 1.0);
    let zeros = Tensor::zeros([2, 1, 24, 20], (Kind::Double, Device::Cpu));
    let r = reconstruction(&pred, &target, &zeros, &cfg(10.0)).unwrap();
    let plain_l1 = v(&(&pred - &target).abs().mean(Kind::Double));
    let plain_ssim = v(&ssim(&pred, &target, 2.0, &SsimParams::default()).unwrap());
    assert!((v(&r.l1) - plain_l1).abs() < 1e-14);
    assert!((v(&r.ssim) - (1.0 - plain_ssim)).abs() < 1e-14);
    let c = LossConfig::default();
    assert!(
        (v(&r.total) - (c.l1_weight * plain_l1 + c.ssim_weight * (1.0 - plain_ssim))).abs() < 1e-12
    );
}

#[test]
fn weighting_is_normalised_so_a_uniform_error_scores_the_same_with_any_mask() {
    let target = Tensor::zeros([1, 1, 16, 16], (Kind::Double, Device::Cpu));
    let pred = target.full_like(0.3);
    let small = block_mask();
    let large = Tensor::ones_like(&small);
    for mask in [Tensor::zeros_like(&small), small, large] {
        for lw in [1.0, 10.0, 50.0] {
            let r = reconstruction(&pred, &target, &mask, &cfg(lw)).unwrap();
            assert!(
                (v(&r.l1) - 0.3).abs() < 1e-14,
                "lung weight {lw}: {}",
                v(&r.l1)
            );
        }
    }
}

#[test]
fn reconstruction_matches_numpy_and_scikit_image_golden() {
    let gold = golden();
    let (pred, target, mask) = (
        &gold.tensors["recon_pred"],
        &gold.tensors["recon_target"],
        &gold.tensors["recon_mask"],
    );
    for lw in [10.0, 1.0] {
        let tag = format!("recon_lung{}", lw as i64);
        let (el1, essim) = (
            gold.values[&format!("{tag}_l1")],
            gold.values[&format!("{tag}_ssim")],
        );
        let r64 = reconstruction(
            &pred.to_kind(Kind::Double),
            &target.to_kind(Kind::Double),
            mask,
            &cfg(lw),
        )
        .unwrap();
        assert!(
            (v(&r64.l1) - el1).abs() < 1e-12,
            "{tag} l1 (f64): {} vs {el1}",
            v(&r64.l1)
        );
        assert!(
            (v(&r64.ssim) - essim).abs() < 1e-10,
            "{tag} ssim (f64): {} vs {essim}",
            v(&r64.ssim)
        );
        let r32 = reconstruction(pred, target, mask, &cfg(lw)).unwrap();
        assert_eq!(r32.total.kind(), Kind::Float);
        assert!((v(&r32.l1) - el1).abs() < 1e-6, "{tag} l1 (f32)");
        assert!((v(&r32.ssim) - essim).abs() < 1e-5, "{tag} ssim (f32)");
    }
    // The lung weighting matters on this pair (the golden would catch an ignored mask).
    assert!((gold.values["recon_lung10_l1"] - gold.values["recon_lung1_l1"]).abs() > 1e-2);
}

#[test]
fn reconstruction_gradients_are_finite_even_for_a_perfect_prediction() {
    let gold = golden();
    let target = &gold.tensors["recon_target"];
    for pred in [gold.tensors["recon_pred"].copy(), target.copy()] {
        let pred = pred.set_requires_grad(true);
        let r = reconstruction(
            &pred,
            target,
            &gold.tensors["recon_mask"],
            &LossConfig::default(),
        )
        .unwrap();
        r.total.backward();
        assert!(is_finite(&pred.grad()));
        assert!(v(&r.total).is_finite());
    }
}

#[test]
fn reconstruction_rejects_bad_shapes_and_config() {
    let a = Tensor::zeros([2, 1, 16, 16], (Kind::Float, Device::Cpu));
    let good_mask = Tensor::zeros([2, 1, 16, 16], (Kind::Float, Device::Cpu));
    for mask_shape in [[1i64, 1, 16, 16], [2, 2, 16, 16], [2, 1, 16, 15]] {
        let mask = Tensor::zeros(mask_shape, (Kind::Float, Device::Cpu));
        assert!(matches!(
            reconstruction(&a, &a, &mask, &LossConfig::default()),
            Err(LossError::Shape { .. })
        ));
    }
    let b = Tensor::zeros([2, 1, 16, 17], (Kind::Float, Device::Cpu));
    assert!(matches!(
        reconstruction(&a, &b, &good_mask, &LossConfig::default()),
        Err(LossError::Shape { .. })
    ));
    let small = Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    let small_mask = Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    assert!(matches!(
        reconstruction(&small, &small, &small_mask, &LossConfig::default()),
        Err(LossError::ImageTooSmall { .. })
    ));
    for bad in [
        LossConfig {
            lung_weight: 0.0,
            ..LossConfig::default()
        },
        LossConfig {
            l1_weight: -1.0,
            ..LossConfig::default()
        },
        LossConfig {
            ssim_data_range: f64::NAN,
            ..LossConfig::default()
        },
    ] {
        assert!(
            matches!(
                reconstruction(&a, &a, &good_mask, &bad),
                Err(LossError::InvalidParameter(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn loss_config_defaults_and_serde() {
    let d = LossConfig::default();
    assert_eq!(
        (
            d.l1_weight,
            d.ssim_weight,
            d.lung_weight,
            d.ssim_data_range,
            d.adversarial_weight,
            d.smoothness_weight
        ),
        (20.0, 10.0, 10.0, 2.0, 1.0, 10.0)
    );
    assert_eq!(d.adversarial, AdversarialKind::Lsgan);
    assert!(d.validate().is_ok());
    assert_eq!(serde_json::from_str::<LossConfig>("{}").unwrap(), d);
    let c: LossConfig =
        serde_json::from_str(r#"{"adversarial": "hinge", "lung_weight": 4}"#).unwrap();
    assert_eq!(
        (c.adversarial, c.lung_weight, c.l1_weight),
        (AdversarialKind::Hinge, 4.0, 20.0)
    );
    assert!(serde_json::from_str::<LossConfig>(r#"{"lung_wieght": 4}"#).is_err());
    let back: LossConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

// ---------------------------------------------------------------- multi-resolution

fn scales(lung_weight: f64, scale_weights: &[f64]) -> LossConfig {
    LossConfig {
        lung_weight,
        scale_weights: scale_weights.to_vec(),
        ..LossConfig::default()
    }
}

#[test]
fn default_reconstruction_is_bitwise_the_single_resolution_loss() {
    // The single-resolution loss written out here (the formula before multi-resolution
    // existed): weighted L1 over the weighted sum, 1 - weighted SSIM.
    let gold = golden();
    let (pred, target, mask) = (
        &gold.tensors["multires_pred"],
        &gold.tensors["multires_target"],
        &gold.tensors["multires_mask"],
    );
    let c = LossConfig::default();
    assert_eq!(c.scale_weights, [1.0]);
    let w = lung_weights(mask, c.lung_weight);
    let w_full = w.expand_as(pred);
    let l1 = (&w_full * (pred - target).abs()).sum(Kind::Float) / w_full.sum(Kind::Float);
    let s = 1.0 - weighted_ssim(pred, target, &w, 2.0, &SsimParams::default()).unwrap();
    let total = &l1 * c.l1_weight + &s * c.ssim_weight;
    let r = reconstruction(pred, target, mask, &c).unwrap();
    assert!(r.l1.equal(&l1) && r.ssim.equal(&s) && r.total.equal(&total));
    assert_eq!(r.levels.len(), 1);
    // Trailing zero weights compute nothing more and change nothing.
    let r0 = reconstruction(pred, target, mask, &scales(10.0, &[1.0, 0.0, 0.0])).unwrap();
    assert!(r0.total.equal(&total));
    assert_eq!(r0.levels.len(), 1);
}

#[test]
fn multi_resolution_matches_pytorch_pooling_and_scikit_image_golden() {
    let gold = golden();
    let (pred, target, mask) = (
        &gold.tensors["multires_pred"],
        &gold.tensors["multires_target"],
        &gold.tensors["multires_mask"],
    );
    for lw in [10.0, 1.0] {
        let tag = format!("multires_lung{}", lw as i64);
        for (name, weights) in [
            ("w1_05_025", vec![1.0, 0.5, 0.25]),
            ("w0_1", vec![0.0, 1.0]),
        ] {
            let c = scales(lw, &weights);
            let r64 = reconstruction(
                &pred.to_kind(Kind::Double),
                &target.to_kind(Kind::Double),
                &mask.to_kind(Kind::Double),
                &c,
            )
            .unwrap();
            assert_eq!(r64.levels.len(), weights.len());
            for (lv, (l1, s)) in r64.levels.iter().enumerate() {
                let el1 = gold.values[&format!("{tag}_level{lv}_l1")];
                let es = gold.values[&format!("{tag}_level{lv}_ssim")];
                assert!(
                    (v(l1) - el1).abs() < 1e-12,
                    "{tag} level {lv} l1: {} vs {el1}",
                    v(l1)
                );
                assert!(
                    (v(s) - es).abs() < 1e-10,
                    "{tag} level {lv} ssim: {} vs {es}",
                    v(s)
                );
            }
            let (el1, es) = (
                gold.values[&format!("{tag}_{name}_l1")],
                gold.values[&format!("{tag}_{name}_ssim")],
            );
            assert!((v(&r64.l1) - el1).abs() < 1e-12, "{tag} {name} l1");
            assert!((v(&r64.ssim) - es).abs() < 1e-10, "{tag} {name} ssim");
            let expected_total = c.l1_weight * el1 + c.ssim_weight * es;
            assert!((v(&r64.total) - expected_total).abs() < 1e-9);
            // float32, as in training.
            let r32 = reconstruction(pred, target, mask, &c).unwrap();
            assert_eq!(r32.total.kind(), Kind::Float);
            assert!(
                (v(&r32.l1) - el1).abs() < 1e-5 * el1.max(1.0),
                "{tag} {name} l1 f32"
            );
            assert!((v(&r32.ssim) - es).abs() < 1e-5, "{tag} {name} ssim f32");
        }
    }
    // The coarse levels differ from the full one, so ignoring them would fail the golden.
    assert!(
        (gold.values["multires_lung10_level0_ssim"] - gold.values["multires_lung10_level2_ssim"])
            .abs()
            > 0.1
    );
}

#[test]
fn coarse_levels_pool_the_mask_into_fractional_weights() {
    // A 1-pixel lung at (4, 4) of a 32x32 image: at 1/2 resolution it is a quarter of coarse
    // pixel (2, 2), whose weight is 1 + (10 - 1) / 4 = 3.25. An error of 1 on the 2x2 block
    // around it averages to 1 in that coarse pixel: L1 = 3.25 / (255 + 3.25).
    let mask = Tensor::zeros([1, 1, 32, 32], (Kind::Double, Device::Cpu));
    let _ = mask.get(0).get(0).get(4).get(4).fill_(1.0);
    let target = Tensor::zeros_like(&mask);
    let pred = Tensor::zeros_like(&mask);
    let _ = pred.narrow(2, 4, 2).narrow(3, 4, 2).fill_(1.0);
    let r = reconstruction(&pred, &target, &mask, &scales(10.0, &[0.0, 1.0])).unwrap();
    let expected = 3.25 / (255.0 + 3.25);
    assert!(
        (v(&r.l1) - expected).abs() < 1e-15,
        "{} vs {expected}",
        v(&r.l1)
    );
}

#[test]
fn multi_resolution_gradients_are_finite() {
    let gold = golden();
    let pred = gold.tensors["multires_pred"].copy().set_requires_grad(true);
    let r = reconstruction(
        &pred,
        &gold.tensors["multires_target"],
        &gold.tensors["multires_mask"],
        &scales(10.0, &[1.0, 0.5, 0.25]),
    )
    .unwrap();
    r.total.backward();
    assert!(is_finite(&pred.grad()));
    assert!(v(&pred.grad().abs().sum(Kind::Float)) > 0.0);
}

#[test]
fn scale_weights_and_image_sizes_are_validated() {
    for bad in [
        vec![],
        vec![1.0, -0.5],
        vec![1.0, f64::INFINITY],
        vec![1.0; MAX_SCALES + 1],
    ] {
        let c = scales(10.0, &bad);
        assert!(
            matches!(c.validate(), Err(LossError::InvalidParameter(ref m)) if m.contains("scale_weights")),
            "{bad:?}"
        );
    }
    let c = scales(10.0, &[1.0, 0.5, 0.25]);
    assert_eq!(c.active_scales(), 3);
    assert_eq!(scales(10.0, &[1.0, 0.5, 0.0]).active_scales(), 2);
    assert_eq!(scales(10.0, &[0.0, 0.0]).active_scales(), 1);
    // 1/4 of 44 is 11: the window fits; 1/4 of 40 is 10: it does not.
    assert!(c.check_image_size(44, 44).is_ok());
    let msg = c.check_image_size(40, 64).unwrap_err().to_string();
    assert!(msg.contains("10x16") && msg.contains("44x44"), "{msg}");
    assert!(scales(10.0, &[1.0, 0.5, 0.0])
        .check_image_size(24, 24)
        .is_ok());
    assert!(LossConfig::default().check_image_size(11, 11).is_ok());
    assert!(LossConfig::default().check_image_size(10, 11).is_err());
    // The loss itself refuses a level below the window.
    let small = Tensor::zeros([1, 1, 40, 40], (Kind::Float, Device::Cpu));
    assert!(matches!(
        reconstruction(&small, &small, &small, &c),
        Err(LossError::ImageTooSmall { .. })
    ));
    // Serde: the field is an array, so a config file replaces it whole.
    let parsed: LossConfig = serde_json::from_str(r#"{"scale_weights": [1, 0.5]}"#).unwrap();
    assert_eq!(parsed.scale_weights, [1.0, 0.5]);
}
