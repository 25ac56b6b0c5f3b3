//! Timing the training step: whole and by part, both through the trainer's own step.
//!
//! The whole-step figure calls `train::step::train_step`; the per-part figures call the same
//! function under a [`PartClock`]: a `tracing` subscriber that times the step's own spans
//! (`train::step::PARTS`, target `train::step::SPAN_TARGET`), so they time exactly what
//! training runs, whatever its switches (R1, progressive phases, perceptual loss, amp). On a
//! GPU the clock synchronises the device before each clock read, so the parts are true
//! per-part times (and their sum a little above the whole step, which runs without those
//! syncs).

use crate::stats::Timings;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tch::Device;
use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use train::config::TrainConfig;
use train::nets::{Nets, Optimizers};
use train::step::{train_step, BatchTensors, StepStats, PARTS, SPAN_TARGET};

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
    pub wall: Timings,
    /// `None` where the CPU time cannot be read.
    pub cpu: Option<Timings>,
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
    let wall = Timings::of(samples).ok_or_else(|| anyhow::anyhow!("no timed steps (steps = 0)"))?;
    let cpu = if cpu_samples.len() == wall.samples.len() {
        Timings::of(cpu_samples)
    } else {
        None
    };
    Ok((StepTimes { wall, cpu }, first))
}

/// The parts of the step, in the order they first run: (name, description) of each of
/// `train::step::PARTS` (the PyTorch twin times the same names).
pub fn parts() -> impl Iterator<Item = (&'static str, &'static str)> {
    PARTS.iter().copied()
}

/// A `tracing` layer that adds the time spent inside each of the step's spans to its part's
/// total (a part may be entered several times per step), synchronising `device` before every
/// clock read.
struct PartClock {
    device: Device,
    totals: Arc<Mutex<Vec<f64>>>,
}

/// When the span being timed was entered (kept in the span's extensions).
struct Entered(Instant);

impl<S> tracing_subscriber::Layer<S> for PartClock
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if span.metadata().target() == SPAN_TARGET {
            sync(self.device);
            span.extensions_mut().replace(Entered(Instant::now()));
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(Entered(t0)) = span.extensions_mut().remove::<Entered>() else {
            return;
        };
        sync(self.device);
        let name = span.metadata().name();
        if let Some(i) = PARTS.iter().position(|(n, _)| *n == name) {
            let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
            totals[i] += t0.elapsed().as_secs_f64();
        }
    }
}

/// Times `warmup + steps` training steps part by part; returns one summary per part of
/// `train::step::PARTS`, in [`parts`] order.
pub fn time_parts(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    warmup: usize,
    steps: usize,
    first_step: u64,
) -> anyhow::Result<Vec<(String, Timings)>> {
    let mut per_part: Vec<Vec<f64>> = vec![Vec::with_capacity(steps); PARTS.len()];
    let device = batch.x.device();
    let totals = Arc::new(Mutex::new(vec![0.0; PARTS.len()]));
    let clock = PartClock {
        device,
        totals: Arc::clone(&totals),
    };
    let subscriber = tracing_subscriber::registry().with(clock);
    tracing::subscriber::with_default(subscriber, || -> anyhow::Result<()> {
        for k in 0..warmup + steps {
            let step = first_step + k as u64;
            train_step(nets, opts, batch, cfg, step, 1.0, false)?;
            let mut acc = totals.lock().unwrap_or_else(PoisonError::into_inner);
            if k >= warmup {
                for (samples, v) in per_part.iter_mut().zip(acc.iter()) {
                    samples.push(*v);
                }
            }
            acc.iter_mut().for_each(|v| *v = 0.0);
        }
        Ok(())
    })?;
    PARTS
        .iter()
        .zip(per_part)
        .map(|((name, _), samples)| {
            Timings::of(samples)
                .map(|s| ((*name).to_owned(), s))
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
