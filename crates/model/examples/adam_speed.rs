//! Times one Adam step over the default preset's G + R variables (~62M parameters), for each
//! implementation, with random gradients.
//!
//! `cargo run --release -p model --example adam_speed -- [THREADS] [STEPS]`
//! (defaults 2 and 5). The PyTorch figures for the same shapes come from
//! `tools/pytorch_twin/adam_speed.py` with the same thread count.

use model::config::ModelConfig;
use model::generator::Generator;
use model::optim::{Adam, AdamConfig, AdamImpl};
use model::registration::RegistrationNet;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let steps: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
    tch::set_num_threads(threads);
    let cfg = ModelConfig::preset("default")?;
    let vs = VarStore::new(Device::Cpu);
    let _g = Generator::new(&(vs.root() / "generator"), &cfg.generator);
    let _r = RegistrationNet::new(&(vs.root() / "registration"), &cfg.registration);
    let vars = vs.trainable_variables();
    let numel: usize = vars.iter().map(|v| v.numel()).sum();
    // Gradients: one backward of a linear function of every variable, then random values.
    let loss = vars.iter().map(|v| v.sum(Kind::Float)).fold(
        tch::Tensor::zeros([], (Kind::Float, Device::Cpu)),
        |a, b| a + b,
    );
    loss.backward();
    tch::no_grad(|| {
        for v in &vars {
            let mut g = v.grad();
            g.copy_(&(g.randn_like() * 1e-3));
        }
    });
    println!(
        "Adam over {} variables, {:.1}M parameters, {threads} threads, median of {steps} steps",
        vars.len(),
        numel as f64 / 1e6
    );
    for implementation in [AdamImpl::Fused, AdamImpl::Loop] {
        let mut opt = Adam::new(
            &vs,
            AdamConfig {
                implementation,
                ..AdamConfig::default()
            },
        )?;
        opt.step(); // warm-up (first touch of the moments)
        let mut times: Vec<f64> = (0..steps)
            .map(|_| {
                let t = Instant::now();
                opt.step();
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "{implementation:?}: median {:.3} s (min {:.3}, max {:.3})",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
    Ok(())
}
