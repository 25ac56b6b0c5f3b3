//! HU error and speed of bf16 inference against fp32, on the CPU: a generator of PRESET with
//! random (seeded) weights, or a trained checkpoint, translating a synthetic chest-like
//! volume of SLICES x SIZE x SIZE.
//!
//! `cargo run --release -p infer --example precision_error -- PRESET|CHECKPOINT SLICES SIZE THREADS RUNS`
//! (defaults: default 8 256 2 3). Prints seconds per volume for each precision (median of RUNS
//! after a warm-up; RUNS = 1: one cold run) and the |HU| difference of bf16 from fp32 (max, mean, 99th percentile).

use dataset::manifest::IntensityWindow;
use infer::predict::{Precision, PredictOptions, Translator};
use ndarray::Array3;
use std::time::Instant;
use tch::nn::VarStore;
use tch::Device;
use volume::{Geometry, Volume};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let source = arg(1, "default");
    let slices: usize = arg(2, "8").parse()?;
    let size: usize = arg(3, "256").parse()?;
    tch::set_num_threads(arg(4, "2").parse()?);
    let runs: usize = arg(5, "3").parse::<usize>()?.max(1);
    tch::manual_seed(0);

    // Either a checkpoint (its G and window) or a random G of a preset.
    let (_store, generator, window, label);
    if std::path::Path::new(&source).exists() {
        let loaded = infer::checkpoint::load_generator(std::path::Path::new(&source), Device::Cpu)?;
        window = loaded.window;
        label = format!("checkpoint {source}");
        generator = loaded.generator;
        _store = loaded.store;
    } else {
        let cfg = model::config::ModelConfig::preset(&source)?;
        let vs = VarStore::new(Device::Cpu);
        generator = model::generator::Generator::new(&vs.root(), &cfg.generator);
        window = IntensityWindow::default();
        label = format!("random {source} G");
        _store = vs;
    }
    // Air, a body ellipse of soft tissue, two lungs, a dense spine and some texture.
    let c = size as f32 / 2.0;
    let hu = Array3::from_shape_fn((slices, size, size), |(z, y, x)| {
        let (fy, fx) = ((y as f32 - c) / c, (x as f32 - c) / c);
        let body = (fx / 0.85).powi(2) + (fy / 0.65).powi(2) < 1.0;
        let lung = ((fx.abs() - 0.4) / 0.28).powi(2) + ((fy + 0.05) / 0.45).powi(2) < 1.0;
        let spine = (fx / 0.1).powi(2) + ((fy - 0.5) / 0.1).powi(2) < 1.0;
        let texture = 30.0 * ((x as f32 * 0.37).sin() * (y as f32 * 0.23 + z as f32).cos());
        match (body, lung, spine) {
            (false, _, _) => -1000.0,
            (true, _, true) => 700.0 + texture,
            (true, true, _) => -850.0 + texture,
            _ => 40.0 + texture,
        }
    });
    let vol = Volume::new(hu, Geometry::identity([0.7, 0.7, 1.5]))?;
    let t = Translator {
        generator: &generator,
        window,
        device: Device::Cpu,
    };
    println!("{label}, {slices} x {size} x {size} volume, batch 8");
    let mut outputs = Vec::new();
    for precision in [Precision::Fp32, Precision::Bf16] {
        let opts = PredictOptions {
            precision,
            ..PredictOptions::new()
        };
        if runs > 1 {
            let _ = t.translate_volume(&vol, &opts, |_| {})?; // warm-up
        }
        let mut times = Vec::new();
        let mut out = None;
        for _ in 0..runs {
            let start = Instant::now();
            out = Some(t.translate_volume(&vol, &opts, |_| {})?);
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{precision:?}: {:.3} s/volume, {:.2} slices/s",
            times[runs / 2],
            slices as f64 / times[runs / 2]
        );
        outputs.extend(out);
    }
    let mut diff: Vec<f32> = outputs[0]
        .data
        .iter()
        .zip(outputs[1].data.iter())
        .map(|(a, b)| (a - b).abs())
        .collect();
    diff.sort_by(f32::total_cmp);
    let mean = diff.iter().map(|d| *d as f64).sum::<f64>() / diff.len() as f64;
    println!(
        "bf16 vs fp32 |HU|: max {:.2}, mean {:.3}, p99 {:.2} (window {}..{} HU)",
        diff[diff.len() - 1],
        mean,
        diff[diff.len() * 99 / 100],
        window.min,
        window.max
    );
    Ok(())
}
