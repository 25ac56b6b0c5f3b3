//! Times the gradient all-reduce of data-parallel training (`Distributed::average_gradients`
//! over G+R, then D, then the step's packed loss vector) for a preset's networks, with both
//! ranks lined up by a barrier before each step: the Rust side of
//! `tools/pytorch_twin/allreduce_speed.py`. Run one process per rank with torchrun's
//! environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); `tools/dist/bench.sh` does both.
//!
//! `allreduce_speed PRESET STEPS` (defaults: default 10). Rank 0 prints one JSON line.

use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use train::config::TrainConfig;
use train::distributed::{Distributed, Launch};
use train::nets::Nets;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let preset = a.get(1).cloned().unwrap_or_else(|| "default".into());
    let steps: usize = a.get(2).map_or(Ok(10), |s| s.parse())?;
    tch::set_num_threads(1);
    let launch = Launch::from_env()?
        .ok_or_else(|| anyhow::anyhow!("run with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT"))?;
    let dist = Distributed::connect(launch, Duration::from_secs(300))?;
    let cfg = TrainConfig::with_preset(&preset)?;
    let nets = Nets::new(&cfg, Device::Cpu);
    let gr = nets.gr_store.trainable_variables();
    let d = nets.d_store.trainable_variables();
    for v in gr.iter().chain(&d) {
        let mut g = v.grad();
        if !g.defined() {
            // a gradient to average: one backward of the sum gives ones
            v.sum(Kind::Float).backward();
            g = v.grad();
        }
        let _ = g.fill_(dist.rank() as f64 + 1.0);
    }
    let numel: i64 = gr.iter().chain(&d).map(Tensor::numel).sum::<usize>() as i64;
    let mut times = Vec::new();
    for step in 0..=steps {
        dist.barrier("the start of a timed step")?;
        let t = Instant::now();
        dist.average_gradients(&gr, "G+R")?;
        dist.average_gradients(&d, "D")?;
        let packed = Tensor::ones([12], (Kind::Double, Device::Cpu));
        dist.sum_(&packed, "the loss vector")?;
        if step > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    // every gradient is the mean of 1..=world
    let want = (dist.world_size() + 1) as f64 / 2.0;
    let got = f64::try_from(gr[0].grad().flatten(0, -1).get(0))?;
    anyhow::ensure!(
        (got - want).abs() < 1e-6,
        "averaged gradient {got}, expected {want}"
    );
    times.sort_by(f64::total_cmp);
    if dist.is_leader() {
        println!(
            "{{\"impl\": \"ncct2ctpa\", \"preset\": \"{preset}\", \"world\": {}, \"params\": {numel}, \
             \"median_ms\": {:.2}, \"min_ms\": {:.2}, \"steps\": {steps}}}",
            dist.world_size(),
            times[times.len() / 2],
            times[0]
        );
    }
    Ok(())
}
