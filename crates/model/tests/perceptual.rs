//! The perceptual loss against PyTorch goldens made by `tools/golden/vgg_random.py` (random
//! narrow "VGG-shaped" networks in torchvision's `features` layout, computed in float64), and
//! the checks that reject a wrong weights file at load time with the file and the key named.

use std::path::{Path, PathBuf};

use model::perceptual::{
    imagenet_input, FeatureDistance, Perceptual, PerceptualConfig, PerceptualError, Vgg, VggVariant,
};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn weights(variant: VggVariant) -> PathBuf {
    data().join(format!("{}_random.safetensors", variant.name()))
}

fn v(t: &Tensor) -> f64 {
    t.double_value(&[])
}

fn golden() -> (Value, Tensor, Tensor) {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(data().join("perceptual_torch.json")).unwrap())
            .unwrap();
    assert_eq!(meta["generator"], "tools/golden/vgg_random.py");
    let mut t: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(data().join("perceptual_torch.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    (meta, t.remove("pred").unwrap(), t.remove("target").unwrap())
}

fn case_config(case: &Value) -> PerceptualConfig {
    let variant: VggVariant = serde_json::from_value(case["variant"].clone()).unwrap();
    PerceptualConfig {
        relative_weight: 0.5,
        weights_file: Some(weights(variant)),
        variant,
        layers: serde_json::from_value(case["layers"].clone()).unwrap(),
        layer_weights: serde_json::from_value(case["layer_weights"].clone()).unwrap(),
        distance: serde_json::from_value(case["distance"].clone()).unwrap(),
        ..PerceptualConfig::default()
    }
}

fn rel_close(got: f64, expected: f64, tol: f64) -> bool {
    (got - expected).abs() <= tol * expected.abs().max(1e-3)
}

#[test]
fn loss_features_and_gradient_match_pytorch() {
    let (meta, pred, target) = golden();
    let cases = meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg = case_config(case);
        let p = Perceptual::from_config(&cfg, Device::Cpu)
            .unwrap()
            .expect("enabled");
        let expected = case["loss"].as_f64().unwrap();
        // float64: the reference's precision (only the stored float32 weights are shared).
        let p64 = pred.to_kind(Kind::Double).set_requires_grad(true);
        let loss64 = p.loss(&p64, &target.to_kind(Kind::Double)).unwrap();
        assert_eq!(loss64.kind(), Kind::Double);
        assert!(
            rel_close(v(&loss64), expected, 1e-10),
            "{name} f64: {} vs {expected}",
            v(&loss64)
        );
        loss64.backward();
        let g = v(&p64.grad().abs().sum(Kind::Double));
        let eg = case["grad_abs_sum"].as_f64().unwrap();
        assert!(rel_close(g, eg, 1e-9), "{name} grad: {g} vs {eg}");
        // float32, as in training.
        let loss32 = p.loss(&pred, &target).unwrap();
        assert_eq!(loss32.kind(), Kind::Float);
        assert!(
            rel_close(v(&loss32), expected, 1e-5),
            "{name} f32: {} vs {expected}",
            v(&loss32)
        );
        // Feature statistics of each compared layer.
        let feats = p.layer_features(&pred.to_kind(Kind::Double)).unwrap();
        let stats = case["features_of_pred"].as_array().unwrap();
        assert_eq!(feats.len(), stats.len());
        for (f, s) in feats.iter().zip(stats) {
            let layer = s["layer"].as_str().unwrap();
            let shape: Vec<i64> = serde_json::from_value(s["shape"].clone()).unwrap();
            assert_eq!(f.size(), shape, "{name} {layer}");
            let (m, sd) = (s["mean"].as_f64().unwrap(), s["std"].as_f64().unwrap());
            assert!(
                rel_close(v(&f.mean(Kind::Double)), m, 1e-10),
                "{name} {layer} mean"
            );
            assert!(rel_close(v(&f.std(false)), sd, 1e-10), "{name} {layer} std");
        }
    }
    // The cases differ, so a loss ignoring the layer weights or the distance would fail.
    let losses: Vec<f64> = cases.iter().map(|c| c["loss"].as_f64().unwrap()).collect();
    assert!((losses[0] - losses[1]).abs() > 1e-5 && (losses[1] - losses[2]).abs() > 1e-3);
}

#[test]
fn imagenet_input_maps_minus_one_to_one_onto_normalised_rgb() {
    let (meta, pred, _) = golden();
    let x = imagenet_input(&pred.to_kind(Kind::Double));
    assert_eq!(x.size(), [2, 3, 32, 32]);
    let means = meta["imagenet_input_channel_means"].as_array().unwrap();
    for (c, m) in means.iter().enumerate() {
        let got = v(&x.select(1, c as i64).mean(Kind::Double));
        assert!((got - m.as_f64().unwrap()).abs() < 1e-12, "channel {c}");
    }
    // -1 (black) and 1 (white) land on (0 - mean) / std and (1 - mean) / std.
    let ends = Tensor::from_slice(&[-1.0f64, 1.0]).view([1, 1, 1, 2]);
    let y = imagenet_input(&ends);
    assert!((y.double_value(&[0, 0, 0, 0]) - (-0.485 / 0.229)).abs() < 1e-12);
    assert!((y.double_value(&[0, 2, 0, 1]) - ((1.0 - 0.406) / 0.225)).abs() < 1e-12);
}

#[test]
fn vgg_is_frozen_and_the_loss_is_zero_for_identical_images() {
    let cfg = PerceptualConfig {
        relative_weight: 1.0,
        weights_file: Some(weights(VggVariant::Vgg16)),
        ..PerceptualConfig::default()
    };
    let p = Perceptual::from_config(&cfg, Device::Cpu).unwrap().unwrap();
    assert_eq!(p.vgg().tensors().len(), 26);
    assert!(p.vgg().tensors().iter().all(|t| !t.requires_grad()));
    assert_eq!(p.vgg().widths(), [4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8]);
    let (_, pred, target) = golden();
    let before: Vec<Tensor> = p.vgg().tensors().iter().map(|t| t.copy()).collect();
    let x = pred.set_requires_grad(true);
    let loss = p.loss(&x, &target).unwrap();
    loss.backward();
    assert!(x.grad().defined());
    for (a, b) in before.iter().zip(p.vgg().tensors()) {
        assert!(a.equal(b) && !b.grad().defined());
    }
    assert_eq!(v(&p.loss(&target, &target).unwrap()), 0.0);
    assert!(p.describe().contains("vgg16") && p.describe().contains("relu4_3:1"));
}

#[test]
fn off_by_default_and_configs_are_checked() {
    let d = PerceptualConfig::default();
    assert!(!d.enabled());
    assert!(Perceptual::from_config(&d, Device::Cpu).unwrap().is_none());
    assert_eq!(d.layers, ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]);
    assert_eq!(d.distance, FeatureDistance::L1);
    assert_eq!(d.min_image_size(), 8);
    let on = |f: fn(&mut PerceptualConfig)| {
        let mut c = PerceptualConfig {
            relative_weight: 0.5,
            weights_file: Some(weights(VggVariant::Vgg16)),
            ..PerceptualConfig::default()
        };
        f(&mut c);
        c.validate().map_err(|e| e.to_string())
    };
    assert!(on(|_| {}).is_ok());
    let msg = on(|c| c.weights_file = None).unwrap_err();
    assert!(msg.contains("weights_file"), "{msg}");
    let msg = on(|c| c.layers = vec!["relu6_1".into()]).unwrap_err();
    assert!(msg.contains("relu6_1") && msg.contains("relu5_3"), "{msg}");
    // relu3_4 is VGG19's only.
    assert!(on(|c| c.layers = vec!["relu3_4".into()]).is_err());
    let msg = on(|c| c.layers = vec!["relu1_2".into(), "relu1_2".into()]).unwrap_err();
    assert!(msg.contains("twice"), "{msg}");
    let msg = on(|c| c.layer_weights = vec![1.0]).unwrap_err();
    assert!(msg.contains("layer_weights"), "{msg}");
    assert!(on(|c| c.layer_weights = vec![0.0; 4]).is_err());
    assert!(on(|c| c.relative_weight = f64::NAN).is_err());
    let c: PerceptualConfig = serde_json::from_str(
        r#"{"relative_weight": 0.2, "weights_file": "v.safetensors", "variant": "vgg19",
            "layers": ["relu5_4"], "distance": "mse"}"#,
    )
    .unwrap();
    assert_eq!(
        (c.variant, c.distance),
        (VggVariant::Vgg19, FeatureDistance::Mse)
    );
    assert_eq!(c.min_image_size(), 16);
    assert!(c.validate().is_ok());
    assert!(serde_json::from_str::<PerceptualConfig>(r#"{"wieght": 1.0}"#).is_err());
}

#[test]
fn images_smaller_than_the_poolings_allow_are_an_error() {
    let cfg = PerceptualConfig {
        relative_weight: 1.0,
        weights_file: Some(weights(VggVariant::Vgg16)),
        ..PerceptualConfig::default()
    };
    let p = Perceptual::from_config(&cfg, Device::Cpu).unwrap().unwrap();
    let small = Tensor::zeros([1, 1, 4, 16], (Kind::Float, Device::Cpu));
    let msg = p.loss(&small, &small).unwrap_err().to_string();
    assert!(msg.contains("8x8"), "{msg}");
    let three = Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu));
    assert!(p.loss(&three, &three).is_err());
}

// ---------------------------------------------------------------- bad files

/// The test VGG16's tensors, to be altered and written to a temporary file.
fn vgg16_tensors() -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(weights(VggVariant::Vgg16)).unwrap()
}

fn write(dir: &Path, name: &str, tensors: &[(String, Tensor)]) -> PathBuf {
    let path = dir.join(name);
    Tensor::write_safetensors(tensors, &path).unwrap();
    path
}

fn load_err(path: &Path, variant: VggVariant) -> (PerceptualError, String) {
    let e = Vgg::load(path, variant, Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "the error must name the file: {msg}"
    );
    (e, msg)
}

#[test]
fn missing_and_non_safetensors_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = load_err(&dir.path().join("nope.safetensors"), VggVariant::Vgg16);
    assert!(matches!(e, PerceptualError::Read { .. }));
    let text = dir.path().join("vgg16.pth");
    std::fs::write(&text, b"PK\x03\x04 this is a torch zip, not safetensors").unwrap();
    let (e, _) = load_err(&text, VggVariant::Vgg16);
    assert!(matches!(e, PerceptualError::NotSafetensors { .. }));
}

#[test]
fn missing_keys_and_wrong_shapes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // A missing bias of the last convolution.
    let t: Vec<_> = vgg16_tensors()
        .into_iter()
        .filter(|(k, _)| k != "features.28.bias")
        .collect();
    let (e, msg) = load_err(&write(dir.path(), "a.safetensors", &t), VggVariant::Vgg16);
    assert!(matches!(e, PerceptualError::MissingKey { .. }), "{msg}");
    assert!(msg.contains("features.28.bias"), "{msg}");

    let alter = |key: &str, f: &dyn Fn(&Tensor) -> Tensor| -> Vec<(String, Tensor)> {
        vgg16_tensors()
            .into_iter()
            .map(|(k, t)| {
                let t = if k == key { f(&t) } else { t };
                (k, t)
            })
            .collect()
    };
    // 5x5 kernels.
    let t = alter("features.5.weight", &|t| {
        Tensor::zeros([t.size()[0], t.size()[1], 5, 5], (Kind::Float, Device::Cpu))
    });
    let (_, msg) = load_err(&write(dir.path(), "b.safetensors", &t), VggVariant::Vgg16);
    assert!(
        msg.contains("features.5.weight") && msg.contains("3x3"),
        "{msg}"
    );
    // Broken channel chaining: conv2_1 takes 5 channels where conv1_2 gives 4.
    let t = alter("features.5.weight", &|t| {
        Tensor::zeros([t.size()[0], 5, 3, 3], (Kind::Float, Device::Cpu))
    });
    let (_, msg) = load_err(&write(dir.path(), "c.safetensors", &t), VggVariant::Vgg16);
    assert!(
        msg.contains("features.5.weight") && msg.contains("previous"),
        "{msg}"
    );
    // A single-channel first convolution.
    let t = alter("features.0.weight", &|t| t.narrow(1, 0, 1).contiguous());
    let (_, msg) = load_err(&write(dir.path(), "d.safetensors", &t), VggVariant::Vgg16);
    assert!(
        msg.contains("features.0.weight") && msg.contains("RGB"),
        "{msg}"
    );
    // A bias of the wrong length.
    let t = alter("features.2.bias", &|t| t.narrow(0, 0, 2).contiguous());
    let (_, msg) = load_err(&write(dir.path(), "e.safetensors", &t), VggVariant::Vgg16);
    assert!(msg.contains("features.2.bias"), "{msg}");
    // Integer weights.
    let t = alter("features.7.weight", &|t| t.to_kind(Kind::Int));
    let (_, msg) = load_err(&write(dir.path(), "f.safetensors", &t), VggVariant::Vgg16);
    assert!(
        msg.contains("features.7.weight") && msg.contains("floating"),
        "{msg}"
    );
}

#[test]
fn the_other_variant_and_batch_norm_vggs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    // VGG19's features.16 is a convolution; VGG16's is a pooling.
    let (e, msg) = load_err(&weights(VggVariant::Vgg19), VggVariant::Vgg16);
    assert!(matches!(e, PerceptualError::BadKey { .. }), "{msg}");
    assert!(
        msg.contains("features.16.") && msg.contains("pool3"),
        "{msg}"
    );
    let (_, msg) = load_err(&weights(VggVariant::Vgg16), VggVariant::Vgg19);
    assert!(msg.contains("features.17."), "{msg}");
    // vgg16_bn: features.1 is a BatchNorm2d.
    let mut t = vgg16_tensors();
    t.push((
        "features.1.running_mean".into(),
        Tensor::zeros([4], (Kind::Float, Device::Cpu)),
    ));
    let (_, msg) = load_err(&write(dir.path(), "bn.safetensors", &t), VggVariant::Vgg16);
    assert!(msg.contains("features.1.running_mean"), "{msg}");
}

#[test]
fn whole_model_and_bare_features_exports_load() {
    let dir = tempfile::tempdir().unwrap();
    let reference = Vgg::load(&weights(VggVariant::Vgg16), VggVariant::Vgg16, Device::Cpu).unwrap();
    let x = imagenet_input(&golden().1);
    let expected = &reference.features(&x, &[22])[0];
    // `vgg.state_dict()` with the classifier: the classifier is ignored.
    let mut whole = vgg16_tensors();
    whole.push((
        "classifier.0.weight".into(),
        Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
    ));
    // `vgg.features.state_dict()`: keys without the `features.` prefix.
    let bare: Vec<_> = vgg16_tensors()
        .into_iter()
        .map(|(k, t)| (k.trim_start_matches("features.").to_owned(), t))
        .collect();
    for (name, t) in [("whole", whole), ("bare", bare)] {
        let path = write(dir.path(), &format!("{name}.safetensors"), &t);
        let vgg = Vgg::load(&path, VggVariant::Vgg16, Device::Cpu).unwrap();
        assert!(vgg.features(&x, &[22])[0].equal(expected), "{name}");
    }
}
