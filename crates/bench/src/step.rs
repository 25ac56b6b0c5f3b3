//! Timing the training step: whole and by part, both through the trainer's own step.
//!
//! The whole-step figure calls `train::step::train_step`; the per-part figures call
//! `train::step::train_step_with_laps` with a [`Clock`] that the step tells when each of its
//! [`Part`]s ends, so they time exactly what training runs, whatever its switches (R1,
//! progressive phases, perceptual loss, amp). On a GPU each lap synchronises the device, so
//! the parts are true per-part times (and their sum a little above the whole step, which
//! runs without those syncs).

use crate::stats::Summary;
use std::time::Instant;
use tch::Device;
use train::config::TrainConfig;
use train::nets::{Nets, Optimizers};
use train::step::{train_step, train_step_with_laps, BatchTensors, Laps, Part, StepStats};

/// Waits for the device's queued work (CUDA), so that a clock read after it is honest.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// CPU time (user + system, all threads) this process has used, seconds, from
/// `/proc/self/stat` (in clock ticks of 1/100 s, Linux's `USER_HZ` on every mainstream
/// architecture); `None` off Linux. Unlike wall time, it barely moves when other processes
/// compete for the cores, so ours / PyTorch in CPU time is the steadier ratio on a loaded
/// machine (`bench.py` reads `time.process_time()`, the same quantity).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu_ticks(&stat).map(|t| t as f64 / 100.0)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line; the command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its closing `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Timings of the whole step: wall and CPU seconds of each timed step.
#[derive(Debug, Clone)]
pub struct StepTimes {
    pub wall: Summary,
    /// `None` where the CPU time cannot be read.
    pub cpu: Option<Summary>,
}

/// Runs `warmup + steps` training steps with `train_step` and returns the timings of the last
/// `steps` and the statistics of the first (for the parity check against PyTorch).
pub fn time_train_steps(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    warmup: usize,
    steps: usize,
    device: Device,
) -> anyhow::Result<(StepTimes, StepStats)> {
    let mut samples = Vec::with_capacity(steps);
    let mut cpu_samples = Vec::with_capacity(steps);
    let mut first = StepStats::default();
    for k in 0..warmup + steps {
        sync(device);
        let c0 = process_cpu_seconds();
        let t0 = Instant::now();
        let stats = train_step(nets, opts, batch, cfg, k as u64 + 1, 1.0, false)?;
        sync(device);
        let dt = t0.elapsed().as_secs_f64();
        let cpu = c0.zip(process_cpu_seconds()).map(|(a, b)| b - a);
        tracing::debug!(
            step = k + 1,
            seconds = dt,
            loss_g = stats.loss_g,
            "bench step"
        );
        if k == 0 {
            first = stats;
        }
        if k >= warmup {
            samples.push(dt);
            if let Some(c) = cpu {
                cpu_samples.push(c);
            }
        }
    }
    let wall = Summary::of(samples).ok_or_else(|| anyhow::anyhow!("no timed steps (steps = 0)"))?;
    let cpu = if cpu_samples.len() == wall.samples.len() {
        Summary::of(cpu_samples)
    } else {
        None
    };
    Ok((StepTimes { wall, cpu }, first))
}

/// The parts of the step, in the order they end: (name, description) of each
/// `train::step::Part` (the PyTorch twin times the same names).
pub fn parts() -> impl Iterator<Item = (&'static str, &'static str)> {
    Part::ALL.iter().map(|p| (p.name(), p.describe()))
}

/// Accumulates time per part within one step.
struct Clock {
    device: Device,
    last: Instant,
    acc: Vec<f64>,
}

impl Clock {
    fn new(device: Device) -> Self {
        sync(device);
        Self {
            device,
            last: Instant::now(),
            acc: vec![0.0; Part::ALL.len()],
        }
    }
}

impl Laps for Clock {
    /// Charges the time since the last lap to `part`.
    fn lap(&mut self, part: Part) {
        sync(self.device);
        let now = Instant::now();
        self.acc[part as usize] += (now - self.last).as_secs_f64();
        self.last = now;
    }
}

/// Times `warmup + steps` training steps part by part; returns one summary per
/// `train::step::Part`, in [`parts`] order.
pub fn time_parts(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    warmup: usize,
    steps: usize,
    first_step: u64,
) -> anyhow::Result<Vec<(String, Summary)>> {
    let mut per_part: Vec<Vec<f64>> = vec![Vec::with_capacity(steps); Part::ALL.len()];
    let device = batch.x.device();
    for k in 0..warmup + steps {
        let mut clock = Clock::new(device);
        let step = first_step + k as u64;
        train_step_with_laps(nets, opts, batch, cfg, step, 1.0, false, &mut clock)?;
        if k >= warmup {
            for (acc, v) in per_part.iter_mut().zip(&clock.acc) {
                acc.push(*v);
            }
        }
    }
    Part::ALL
        .iter()
        .zip(per_part)
        .map(|(part, samples)| {
            Summary::of(samples)
                .map(|s| (part.name().to_owned(), s))
                .ok_or_else(|| anyhow::anyhow!("no timed steps (steps = 0)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::synthetic_batch;

    #[test]
    fn reads_cpu_ticks_past_an_odd_command_name() {
        let line = "1234 (my (odd) cmd) R 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 3 0 100";
        assert_eq!(parse_stat_cpu_ticks(line), Some(281));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let a = process_cpu_seconds().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds().unwrap() >= a);
    }

    /// The per-part clock sees every part of a full step (R and D on), each once at least,
    /// and the parts add up to the step.
    #[test]
    fn every_part_of_the_trainers_step_is_timed() {
        let _serial = crate::serial_test();
        let mut cfg = TrainConfig::with_preset("tiny").unwrap();
        cfg.seed = 7;
        let mut nets = Nets::new(&cfg, Device::Cpu);
        let mut opts = nets.optimizers(&cfg).unwrap();
        let batch = synthetic_batch(2, 32, Device::Cpu).unwrap();
        let t0 = Instant::now();
        let timed = time_parts(&mut nets, &mut opts, &batch, &cfg, 0, 2, 1).unwrap();
        let total = t0.elapsed().as_secs_f64();
        let names: Vec<&str> = timed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, parts().map(|(n, _)| n).collect::<Vec<_>>());
        for (name, s) in &timed {
            assert!(s.median > 0.0, "{name} was never timed");
        }
        let sum: f64 = timed.iter().flat_map(|(_, s)| s.samples.iter()).sum();
        assert!(sum <= total, "parts {sum} s > wall {total} s");
    }
}
