//! Times the training step (`train::step::train_step`) on the CPU in fp32 and with bf16
//! autocast of the forward passes, on random data, to decide whether `amp = "bf16"` is worth
//! allowing on the CPU (`train::amp`: it is not, as measured).
//!
//! `cargo run --release -p train --example amp_speed -- PRESET BATCH CROP STEPS THREADS`
//! (defaults: tiny 4 128 3 2). One warm-up step per mode, then the median of STEPS.

use std::time::Instant;
use tch::{Device, Kind, Tensor};
use train::amp::Precision;
use train::config::TrainConfig;
use train::nets::Nets;
use train::step::{train_step, BatchTensors};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let preset = arg(1, "tiny");
    let batch: i64 = arg(2, "4").parse()?;
    let crop: i64 = arg(3, "128").parse()?;
    let steps: usize = arg(4, "3").parse()?;
    let threads: i32 = arg(5, "2").parse()?;
    tch::set_num_threads(threads);
    let mut cfg = TrainConfig::with_preset(&preset)?;
    cfg.device = "cpu".into();
    tch::manual_seed(0);
    let shape = [batch, 1, crop, crop];
    let b = BatchTensors {
        x: Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 2.0 - 1.0,
        stack: None,
        planes: None,
        y: Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 2.0 - 1.0,
        lung: Tensor::rand(shape, (Kind::Float, Device::Cpu))
            .gt(0.5)
            .to_kind(Kind::Float),
        body: Tensor::ones(shape, (Kind::Float, Device::Cpu)),
    };
    println!("preset {preset}, batch {batch}, crop {crop}, {threads} threads, median of {steps}");
    for mode in [Precision::Fp32, Precision::Bf16] {
        let mut nets = Nets::new(&cfg, Device::Cpu);
        // optimizers built with amp off: the CPU refuses bf16 at start-up (train::amp)
        let mut opts = nets.optimizers(&cfg)?;
        let mut run_cfg = cfg.clone();
        run_cfg.amp = mode;
        let mut times = Vec::new();
        let mut loss = 0.0;
        for step in 1..=(steps as u64 + 1) {
            let t = Instant::now();
            let s = train_step(&mut nets, &mut opts, &b, &run_cfg, step, 1.0, false)?;
            if step > 1 {
                times.push(t.elapsed().as_secs_f64());
            }
            loss = s.loss_g;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{mode:?}: median {:.3} s/step (min {:.3}, max {:.3}), last G loss {loss:.4}",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
    Ok(())
}
