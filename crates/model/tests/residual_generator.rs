//! The residual generator (`GeneratorConfig::residual`): identity at initialisation, a
//! correction learned in tanh's pre-activation space, the centre slice of a 2.5D stack.

use model::config::{GeneratorConfig, ModelConfig};
use model::generator::{Generator, RESIDUAL_EPS};
use model::summary::ModelSummary;
use tch::nn::{ModuleT, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

fn tiny(residual: bool, in_channels: i64) -> GeneratorConfig {
    GeneratorConfig {
        residual,
        in_channels,
        ..ModelConfig::preset("tiny").unwrap().generator
    }
}

/// A [batch, channels, 32, 32] ramp covering the whole window, air included.
fn ramp(channels: i64) -> Tensor {
    let n = 2 * channels * 32 * 32;
    Tensor::linspace(-1.0, 1.0, n, (Kind::Float, Device::Cpu)).reshape([2, channels, 32, 32])
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn an_untrained_residual_generator_is_the_identity() {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &tiny(true, 1));
    let x = ramp(1);
    let y = g.forward_t(&x, true);
    // Exact inside the clamp; the window edges are off by at most the clamp.
    assert!(
        max_abs(&y, &x) <= RESIDUAL_EPS * 1.01,
        "{}",
        max_abs(&y, &x)
    );
    let inner = x.clamp(-0.99, 0.99);
    assert!(max_abs(&g.forward_t(&inner, true), &inner) < 1e-6);

    // The plain generator is not the identity at initialisation.
    let vs = VarStore::new(Device::Cpu);
    let plain = Generator::new(&vs.root(), &tiny(false, 1));
    assert!(max_abs(&plain.forward_t(&x, true), &x) > 0.1);
}

#[test]
fn the_correction_is_added_to_the_centre_slice_of_a_2_5d_stack() {
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &tiny(true, 3));
    let x = ramp(3);
    let y = g.forward_t(&x, false);
    assert_eq!(y.size(), [2, 1, 32, 32]);
    let centre = x.narrow(1, 1, 1);
    assert!(max_abs(&y, &centre) <= RESIDUAL_EPS * 1.01);
    assert!(max_abs(&y, &x.narrow(1, 0, 1)) > 1e-3);
}

#[test]
fn a_residual_generator_learns_a_contrast_change_and_stays_in_range() {
    tch::manual_seed(2);
    let vs = VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &tiny(true, 1));
    let x = ramp(1);
    // Target: the input brightened by 0.3 in a square (a "vessel"), clipped to the window.
    let mask = Tensor::zeros([2, 1, 32, 32], (Kind::Float, Device::Cpu));
    let _ = mask.narrow(2, 8, 16).narrow(3, 8, 16).fill_(1.0);
    let target = (&x + &mask * 0.3).clamp(-1.0, 1.0);
    let mut opt = tch::nn::Adam::default().build(&vs, 3e-3).unwrap();
    let loss0 = (g.forward_t(&x, true) - &target).abs().mean(Kind::Float);
    let loss0 = loss0.double_value(&[]);
    for _ in 0..60 {
        let loss = (g.forward_t(&x, true) - &target).abs().mean(Kind::Float);
        opt.backward_step(&loss);
    }
    let y = g.forward_t(&x, true);
    let loss = (&y - &target).abs().mean(Kind::Float).double_value(&[]);
    assert!(loss < 0.5 * loss0, "L1 {loss0} -> {loss}");
    assert!(
        y.abs().max().double_value(&[]) < 1.0,
        "output leaves (-1, 1)"
    );
}

#[test]
fn residual_keeps_the_parameter_count_and_defaults_off() {
    assert!(!GeneratorConfig::default().residual);
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    let plain = ModelSummary::for_config(&cfg).generator.trainable;
    cfg.generator.residual = true;
    assert_eq!(ModelSummary::for_config(&cfg).generator.trainable, plain);
}
