//! G's weight initialisation (`GeneratorConfig::init`): pix2pix's N(0, 0.02) by default, He
//! normal on request, and why the second is what a G without normalization needs.

use model::config::{Activation, GeneratorConfig, ModelConfig, Norm, WeightInit};
use model::generator::Generator;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

/// The default preset's G at the tiny preset's size, with the given norm and init.
fn tiny(norm: Norm, init: WeightInit, residual: bool) -> GeneratorConfig {
    GeneratorConfig {
        norm,
        init,
        residual,
        ..ModelConfig::preset("tiny").unwrap().generator
    }
}

fn std_of(t: &Tensor) -> f64 {
    t.std(true).double_value(&[])
}

#[test]
fn kaiming_gives_every_conv_the_std_of_its_fan_in_and_the_default_stays_gan() {
    assert_eq!(GeneratorConfig::default().init, WeightInit::Gan);
    for (activation, gain) in [
        (Activation::Relu, 2f64.sqrt()),
        (Activation::LeakyRelu, (2.0f64 / 1.04).sqrt()),
    ] {
        tch::manual_seed(3);
        let cfg = GeneratorConfig {
            activation,
            // wide enough that each weight's sample std is within a few percent
            base_channels: 32,
            ..tiny(Norm::None, WeightInit::Kaiming, false)
        };
        assert!((cfg.activation_gain() - gain).abs() < 1e-12);
        let vs = VarStore::new(Device::Cpu);
        let _g = Generator::new(&vs.root(), &cfg);
        let mut checked = 0;
        for (name, w) in vs.variables() {
            if !name.ends_with("weight") {
                continue;
            }
            let dims = w.size();
            // fan in as PyTorch computes it: dims[1] x the kernel's size
            let fan_in = (dims[1] * dims[2..].iter().product::<i64>()) as f64;
            let expected = if name == "head.weight" { 1.0 } else { gain } / fan_in.sqrt();
            let got = std_of(&w);
            // a sample std's relative error is about 1 / sqrt(2 n): allow 4 of those
            let tolerance = 4.0 / (2.0 * w.numel() as f64).sqrt();
            assert!(
                (got / expected - 1.0).abs() < tolerance,
                "{name} {dims:?}: std {got} against {expected}"
            );
            checked += 1;
        }
        // tiny G: 3 down + mid + 3 up stages of 2 convs, 3 up-convs, the head
        assert_eq!(checked, 7 * 2 + 3 + 1);
    }
    // the GAN init: 0.02 whatever the fan in
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    let _g = Generator::new(
        &vs.root(),
        &GeneratorConfig {
            base_channels: 32,
            ..tiny(Norm::None, WeightInit::Gan, false)
        },
    );
    let w = &vs.variables()["down.0.0.conv.weight"];
    assert!((std_of(w) / 0.02 - 1.0).abs() < 0.1, "{}", std_of(w));
}

/// The gradient reaching a residual G's (zero) head: how much G can learn from its first
/// step. Its size is the size of the features the head sees.
fn head_gradient(norm: Norm, init: WeightInit) -> f64 {
    tch::manual_seed(11);
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &tiny(norm, init, true));
    let x = Tensor::rand([2, 1, 32, 32], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
    let target = Tensor::rand([2, 1, 32, 32], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
    let loss = (g.forward_t(&x, true) - target).abs().mean(Kind::Float);
    loss.backward();
    vs.variables()["head.weight"]
        .grad()
        .norm()
        .double_value(&[])
}

#[test]
fn without_normalization_only_kaiming_keeps_the_signal_alive() {
    let instance = head_gradient(Norm::Instance, WeightInit::Gan);
    let none_gan = head_gradient(Norm::None, WeightInit::Gan);
    let none_kaiming = head_gradient(Norm::None, WeightInit::Kaiming);
    // instance norm rescales every feature map, whatever the init
    assert!(instance > 0.01, "instance norm: {instance}");
    // N(0, 0.02) without it: the features shrink ~0.1x per layer
    assert!(none_gan < instance / 100.0, "{none_gan} vs {instance}");
    // He init keeps them at the scale a normalized G has
    assert!(
        none_kaiming > instance / 10.0 && none_kaiming < instance * 10.0,
        "{none_kaiming} vs {instance}"
    );
}
