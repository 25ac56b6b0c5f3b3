//! G, R and D: parameter counts of each preset, output shapes on several sizes, the error for
//! sizes that do not fit, R starting at the identity, config serde.

use model::config::{
    Activation, DiscriminatorConfig, GeneratorConfig, ModelConfig, Norm, RegistrationConfig,
};
use model::discriminator::Discriminator;
use model::generator::Generator;
use model::registration::RegistrationNet;
use model::summary::ModelSummary;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

/// c(i, o, k) = i*o*k*k + o: a conv with bias.
fn conv(c_in: i64, c_out: i64, k: i64) -> i64 {
    c_in * c_out * k * k + c_out
}

/// An independent count of a UNet with bias everywhere (instance norm / no norm), written
/// from the architecture's description rather than from the code.
fn unet_params(c_in: i64, c_out: i64, base: i64, depth: u32, max: i64, convs: i64) -> i64 {
    let w = |i: u32| (base * 2i64.pow(i)).min(max);
    let mut p = 0;
    let mut c = c_in;
    for i in 0..=depth {
        p += conv(c, w(i), 3) + (convs - 1) * conv(w(i), w(i), 3);
        c = w(i);
    }
    for i in 0..depth {
        p += conv(w(i + 1), w(i), 2) + conv(2 * w(i), w(i), 3) + (convs - 1) * conv(w(i), w(i), 3);
    }
    p + conv(w(0), c_out, 1)
}

#[test]
fn default_generator_has_61m_plus_minus_2m_parameters() {
    let cfg = ModelConfig::preset("default").unwrap();
    let summary = ModelSummary::for_config(&cfg);
    assert_eq!(summary.generator.trainable, 62_444_609);
    assert_eq!(
        summary.generator.trainable,
        unet_params(1, 1, 64, 4, 1024, 4)
    );
    assert!((59_000_000..=63_000_000).contains(&summary.generator.trainable));
    // instance norm has no state: everything saved is trainable
    assert_eq!(summary.generator.total, summary.generator.trainable);
}

#[test]
fn registration_presets_match_the_owner_and_reggan_figures() {
    let default = ModelSummary::for_config(&ModelConfig::preset("default").unwrap());
    assert_eq!(default.registration.trainable, 71_150);
    assert_eq!(
        default.registration.trainable,
        unet_params(2, 2, 12, 3, 24, 2)
    );
    assert!((default.registration.trainable as f64 / 0.07e6 - 1.0).abs() < 0.05);
    let reggan = ModelSummary::for_config(&ModelConfig::preset("reggan").unwrap());
    assert_eq!(
        reggan.registration.trainable,
        unet_params(2, 2, 32, 4, 128, 2)
    );
    assert!((reggan.registration.trainable as f64 / 2.06e6 - 1.0).abs() < 0.01);
    assert_eq!(reggan.generator, default.generator);
}

#[test]
fn discriminator_counts_include_spectral_norm_state_in_total_only() {
    let s = ModelSummary::for_config(&ModelConfig::preset("default").unwrap());
    // pix2pix NLayerDiscriminator(ndf=64, n_layers=3), instance norm: every conv has a bias
    let convs = [(1, 64), (64, 128), (128, 256), (256, 512), (512, 1)];
    let weights: i64 = convs.iter().map(|&(i, o)| conv(i, o, 4)).sum();
    assert_eq!(s.discriminator.trainable, weights);
    assert_eq!(s.discriminator.trainable, 2_762_689);
    // u has `out` elements, v has `in * 16`
    let uv: i64 = convs.iter().map(|&(i, o)| o + i * 16).sum();
    assert_eq!(s.discriminator.total, weights + uv);
}

#[test]
fn tiny_preset_is_small_and_every_preset_builds() {
    for name in ModelConfig::preset_names() {
        let cfg = ModelConfig::preset(name).unwrap();
        let s = ModelSummary::for_config(&cfg);
        assert!(s.generator.trainable > 0 && s.registration.trainable > 0);
        assert!(s.discriminator.trainable > 0);
    }
    let tiny = ModelSummary::for_config(&ModelConfig::preset("tiny").unwrap());
    assert_eq!(tiny.generator.trainable, unet_params(1, 1, 8, 3, 64, 2));
    assert!(tiny.generator.trainable < 200_000);
    assert!(ModelConfig::preset("huge").is_err());
    let table = tiny.to_string();
    assert!(
        table.contains("G generator") && table.contains("D discriminator"),
        "{table}"
    );
}

#[test]
fn generator_output_shapes_and_range_on_several_sizes() {
    let cfg = ModelConfig::preset("tiny").unwrap().generator;
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &cfg);
    for (b, h, w) in [(1, 8, 8), (2, 32, 48), (1, 64, 40)] {
        g.check_input_size(h, w).unwrap();
        let x = Tensor::rand([b, 1, h, w], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let y = tch::no_grad(|| g.forward_t(&x, false));
        assert_eq!(y.size(), vec![b, 1, h, w]);
        assert!(y.abs().max().double_value(&[]) <= 1.0);
    }
}

#[test]
fn generator_takes_a_2_5d_stack_and_batch_norm_leaky_relu() {
    let cfg = GeneratorConfig {
        in_channels: 3,
        base_channels: 4,
        depth: 2,
        convs_per_stage: 1,
        norm: Norm::Batch,
        activation: Activation::LeakyRelu,
        ..GeneratorConfig::default()
    };
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &cfg);
    let x = Tensor::randn([2, 3, 16, 12], (Kind::Float, Device::Cpu));
    assert_eq!(g.forward_t(&x, true).size(), vec![2, 1, 16, 12]);
    // batch norm's running statistics are saved state, not trainable parameters
    let vars = vs.variables();
    assert!(vars.contains_key("down.0.0.norm.running_mean"));
    assert!(!vars.contains_key("down.0.0.conv.bias"));
}

#[test]
fn invalid_sizes_give_a_clear_error() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &cfg.generator);
    let r = RegistrationNet::new(&vs.root().sub("r"), &cfg.registration);
    let err = g.check_input_size(30, 32).unwrap_err().to_string();
    assert!(
        err.contains("30x32") && err.contains("multiple of 8"),
        "{err}"
    );
    assert!(err.contains("32x32"), "suggests the padded size: {err}");
    assert!(g.check_input_size(32, 0).is_err());
    assert!(g.check_input_size(-8, 8).is_err());
    assert!(r.check_input_size(6, 8).is_err());
    r.check_input_size(4, 8).unwrap();
    assert_eq!(cfg.generator.size_multiple(), 8);
    assert_eq!(cfg.size_multiple(), 8);
}

#[test]
fn registration_output_shape_and_near_identity_at_init() {
    let cfg = ModelConfig::preset("default").unwrap().registration;
    let vs = VarStore::new(Device::Cpu);
    let r = RegistrationNet::new(&vs.root(), &cfg);
    let moving = Tensor::rand([2, 1, 32, 24], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let fixed = Tensor::rand([2, 1, 32, 24], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let flow = tch::no_grad(|| r.forward_t(&moving, &fixed, false));
    assert_eq!(flow.size(), vec![2, 2, 32, 24]);
    let max = flow.abs().max().double_value(&[]);
    assert!(
        max < 1e-2,
        "R must start near the identity, max |flow| = {max}"
    );
    // the head starts at N(0, 1e-5) weights and zero bias
    let vars = vs.variables();
    assert_eq!(vars["head.bias"].abs().max().double_value(&[]), 0.0);
    assert!(vars["head.weight"].std(true).double_value(&[]) < 1e-4);
}

/// `max_displacement_px`: the in-plane field is `m * tanh(raw / m)` of the unbounded R's
/// field (same weights), so never beyond `m`, and nearly the raw field where it is small;
/// dz (across slices) keeps its own [-1, 1] bound.
#[test]
fn registration_field_is_bounded_by_max_displacement() {
    for through_plane in [false, true] {
        let raw_cfg = RegistrationConfig {
            head_init_std: 3.0, // a large field from the start
            through_plane,
            ..ModelConfig::preset("tiny").unwrap().registration
        };
        let bounded_cfg = RegistrationConfig {
            max_displacement_px: 2.0,
            ..raw_cfg.clone()
        };
        let mut vs_raw = VarStore::new(Device::Cpu);
        let raw = RegistrationNet::new(&vs_raw.root(), &raw_cfg);
        let vs_bounded = VarStore::new(Device::Cpu);
        let bounded = RegistrationNet::new(&vs_bounded.root(), &bounded_cfg);
        vs_raw.copy(&vs_bounded).unwrap();
        let channels = if through_plane { 3 } else { 1 };
        let moving = Tensor::rand([2, channels, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let fixed = Tensor::rand([2, 1, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let (r, b) = tch::no_grad(|| {
            (
                raw.forward_t(&moving, &fixed, false),
                bounded.forward_t(&moving, &fixed, false),
            )
        });
        let (r_xy, b_xy) = (r.narrow(1, 0, 2), b.narrow(1, 0, 2));
        let raw_max = r_xy.abs().max().double_value(&[]);
        assert!(
            raw_max > 4.0,
            "the test needs a large raw field, got {raw_max}"
        );
        let b_max = b_xy.abs().max().double_value(&[]);
        assert!(b_max <= 2.0, "bounded field reaches {b_max} px");
        // independently: 2 tanh(raw / 2), element by element
        let expected = Vec::<f32>::try_from(r_xy.reshape([-1])).unwrap();
        let got = Vec::<f32>::try_from(b_xy.reshape([-1])).unwrap();
        for (e, g) in expected.iter().zip(&got) {
            let want = 2.0 * (e / 2.0).tanh();
            assert!((want - g).abs() < 1e-5, "raw {e}: {g} != {want}");
            if e.abs() < 0.1 {
                assert!(
                    (g - e).abs() < 1e-3 * e.abs().max(1e-3) * 10.0,
                    "small {e} -> {g}"
                );
            }
        }
        if through_plane {
            // dz is the same tanh-bounded slice shift in both
            let dz = (r.narrow(1, 2, 1) - b.narrow(1, 2, 1)).abs().max();
            assert_eq!(dz.double_value(&[]), 0.0);
        }
    }
    // 0 = no bound: the raw field itself
    let raw = Tensor::from_slice(&[-50.0f32, 0.5, 7.0]);
    assert_eq!(
        Vec::<f32>::try_from(model::registration::bound(&raw, 0.0)).unwrap(),
        vec![-50.0, 0.5, 7.0]
    );
}

#[test]
fn discriminator_patch_shapes_unconditional_and_conditional() {
    for conditional in [false, true] {
        let cfg = DiscriminatorConfig {
            conditional,
            ..ModelConfig::preset("tiny").unwrap().discriminator
        };
        let vs = VarStore::new(Device::Cpu);
        let d = Discriminator::new(&vs.root(), &cfg);
        let image = Tensor::randn([2, 1, 64, 32], (Kind::Float, Device::Cpu));
        let ncct = Tensor::randn([2, 1, 64, 32], (Kind::Float, Device::Cpu));
        let x = d.input(&image, &ncct);
        assert_eq!(x.size()[1], if conditional { 2 } else { 1 });
        // 70x70 PatchGAN: h' = h / 8 - 2
        let logits = d.forward_t(&x, false);
        assert_eq!(logits.size(), vec![2, 1, 6, 2]);
        assert_eq!(
            vs.variables()["layers.0.conv.weight_orig"].size()[1],
            x.size()[1]
        );
    }
}

#[test]
fn default_discriminator_patch_is_30x30_on_256() {
    let vs = VarStore::new(Device::Cpu);
    let d = Discriminator::new(&vs.root(), &DiscriminatorConfig::default());
    let x = Tensor::zeros([1, 1, 256, 256], (Kind::Float, Device::Cpu));
    assert_eq!(
        tch::no_grad(|| d.forward_t(&x, false)).size(),
        vec![1, 1, 30, 30]
    );
}

#[test]
fn config_serde_round_trips_and_rejects_unknown_keys() {
    for name in ModelConfig::preset_names() {
        let cfg = ModelConfig::preset(name).unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), cfg);
    }
    // a partial config takes the defaults for what it does not name
    let partial: ModelConfig =
        serde_json::from_str(r#"{"generator": {"depth": 3, "norm": "batch"}}"#).unwrap();
    assert_eq!(partial.generator.depth, 3);
    assert_eq!(partial.generator.norm, Norm::Batch);
    assert_eq!(partial.registration, RegistrationConfig::default());
    let typo = serde_json::from_str::<ModelConfig>(r#"{"generator": {"dept": 3}}"#);
    assert!(typo.unwrap_err().to_string().contains("dept"));
}

/// Regression: two training forwards of D before one backward (real and fake judged in
/// separate passes, as pix2pix does) must not trip autograd's in-place check: sigma must not
/// share storage with the u and v that the second power iteration overwrites.
#[test]
fn discriminator_two_train_forwards_then_backward() {
    use tch::nn::ModuleT;
    let cfg = model::config::ModelConfig::preset("tiny").unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let d = model::discriminator::Discriminator::new(&vs.root(), &cfg.discriminator);
    let opts = (tch::Kind::Float, tch::Device::Cpu);
    let real = tch::Tensor::randn([1, 1, 64, 64], opts);
    let fake = tch::Tensor::randn([1, 1, 64, 64], opts);
    let loss = d.forward_t(&real, true).mean(None) - d.forward_t(&fake, true).mean(None);
    loss.backward();
    let grads: f64 = vs
        .trainable_variables()
        .iter()
        .map(|v| v.grad().abs().sum(tch::Kind::Double).double_value(&[]))
        .sum();
    assert!(grads.is_finite() && grads > 0.0, "gradient sum {grads}");
}
