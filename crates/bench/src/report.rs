//! The benchmark's results: the JSON document (`bench.json`) and the printed table.

use crate::data::DataReport;
use crate::epoch::EpochReport;
use crate::infer::InferReport;
use crate::memory::PhaseMemory;
use crate::pytorch::TorchReport;
use crate::stats::Timings;
use model::flops::StepFlops;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// Version of the `bench.json` layout.
pub const REPORT_SCHEMA: u32 = 2;

/// Everything measured in one `ncct2ctpa bench` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema: u32,
    /// The device the Rust side ran on.
    pub device: String,
    /// Intra-op threads on both sides.
    pub threads: usize,
    /// Logical CPUs of the machine.
    pub cpus: usize,
    /// 1-minute load average when the run started (other processes competing for the cores).
    pub load_average: Option<f64>,
    pub configs: Vec<ConfigReport>,
    /// The whole-epoch comparison, when run.
    #[serde(default)]
    pub epoch: Option<EpochReport>,
    /// Why PyTorch was not run, when it was not.
    pub pytorch_skipped: Option<String>,
}

/// The figures of one preset / crop / batch.
fn one() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigReport {
    pub preset: String,
    pub size: usize,
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Rounds of the whole-step timing: ours and PyTorch's alternate `rounds` times and each
    /// side's step samples are pooled (1: one of each, as before this field existed).
    #[serde(default = "one")]
    pub rounds: usize,
    /// Weights and inputs in channels-last memory format.
    #[serde(default)]
    pub channels_last: bool,
    /// The whole training step (`train::step::train_step`).
    pub step: Timings,
    /// CPU time (user + system, all threads) of the same steps.
    #[serde(default)]
    pub step_cpu: Option<Timings>,
    /// The step's parts ([`crate::step::parts`]), timed in the trainer's own step.
    pub parts: Vec<(String, Timings)>,
    /// Losses of the first step (same initial weights and batch as PyTorch's first step).
    pub first_loss_g: f64,
    pub first_loss_d: f64,
    pub flops: StepFlops,
    /// `flops.total / step.median`, FLOP/s.
    pub achieved_flops_per_s: f64,
    pub infer: Option<InferReport>,
    /// FLOPs of one G forward at the inference size.
    pub infer_g_flops: Option<u64>,
    pub data: Option<DataReport>,
    /// Peak resident memory per phase (`step`, `infer`, `data`).
    pub memory: BTreeMap<String, PhaseMemory>,
    pub pytorch: Option<TorchReport>,
}

impl BenchReport {
    /// Writes the report as pretty JSON, atomically (temporary file in the same folder, then
    /// rename).
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| {
            anyhow::anyhow!("{}: cannot create a temporary file: {e}", dir.display())
        })?;
        serde_json::to_writer_pretty(&mut tmp, self)?;
        tmp.write_all(b"\n")?;
        tmp.persist(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {}", path.display(), e.error))?;
        Ok(())
    }

    /// The human table: figure | ours | PyTorch | ours/PyTorch, one block per configuration.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "device {}, {} threads on both sides, {} CPUs{}",
            self.device,
            self.threads,
            self.cpus,
            self.load_average
                .map(|l| format!(", load average {l:.2} at start"))
                .unwrap_or_default()
        );
        if let Some(why) = &self.pytorch_skipped {
            let _ = writeln!(out, "PyTorch was not run: {why}");
        }
        for c in &self.configs {
            let _ = writeln!(
                out,
                "\n## preset {}, {}x{}, batch {} ({} steps after {} warm-up{}{})",
                c.preset,
                c.size,
                c.size,
                c.batch,
                c.steps,
                c.warmup,
                if c.rounds > 1 {
                    format!(", x {} alternated rounds, pooled", c.rounds)
                } else {
                    String::new()
                },
                if c.channels_last {
                    ", channels-last"
                } else {
                    ""
                }
            );
            write_rows(&mut out, &c.rows());
            if let Some(t) = &c.pytorch {
                let _ = writeln!(
                    out,
                    "first-step losses from the same weights: G {:.6} vs {:.6}, D {:.6} vs {:.6}",
                    c.first_loss_g,
                    t.first_step.get("loss_g").copied().unwrap_or(f64::NAN),
                    c.first_loss_d,
                    t.first_step.get("loss_d").copied().unwrap_or(f64::NAN)
                );
            }
            if !c.parts.is_empty() {
                let _ = writeln!(
                    out,
                    "\nstep parts, median of {} steps (timed in separate steps):",
                    c.steps
                );
                write_rows(&mut out, &c.part_rows());
            }
        }
        if let Some(e) = &self.epoch {
            let _ = writeln!(
                out,
                "\n## epoch on {}: preset {}, {}x{} crops, batch {}, {} loader workers, {} threads",
                e.dataset.display(),
                e.preset,
                e.crop,
                e.crop,
                e.batch,
                e.workers,
                e.threads
            );
            write_rows(&mut out, &e.rows());
            if e.ours_runs_s.len() > 1 {
                let list = |v: &[f64]| {
                    v.iter()
                        .map(|s| format!("{s:.1}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(
                    out,
                    "epoch wall times of the alternated runs (s): ours {}; PyTorch {}",
                    list(&e.ours_runs_s),
                    list(&e.pytorch_runs_s)
                );
            }
            if let Some(t) = &e.pytorch {
                let _ = writeln!(
                    out,
                    "first-step G loss (same weights, different random crops): {:.4} vs {:.4}",
                    e.ours.first_loss_g, t.first_loss_g
                );
            }
        }
        out
    }
}

/// How a figure is printed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    Seconds,
    PerSecond,
    MiB,
    Flops,
    Count,
}

fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Seconds if v < 1.0 => format!("{:.1} ms", v * 1e3),
        Unit::Seconds => format!("{v:.2} s"),
        Unit::PerSecond => format!("{v:.2}/s"),
        Unit::MiB => format!("{v:.0} MiB"),
        Unit::Flops => format!("{:.2} G", v / 1e9),
        Unit::Count => format!("{v:.0}"),
    }
}

type Row = (String, Option<f64>, Option<f64>, Unit);

/// Writes `rows` as a Markdown table: figure | ours | PyTorch | ours/PyTorch.
fn write_rows(out: &mut String, rows: &[Row]) {
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10).max(6);
    let _ = writeln!(
        out,
        "| {:w$} | {:>12} | {:>12} | {:>12} |",
        "figure", "ours", "PyTorch", "ours/PyTorch"
    );
    let _ = writeln!(
        out,
        "|{}|{}|{}|{}|",
        "-".repeat(w + 2),
        "-".repeat(14),
        "-".repeat(14),
        "-".repeat(14)
    );
    for (name, ours, theirs, unit) in rows {
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format_value(v, *unit));
        let ratio = match (ours, theirs) {
            (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {name:w$} | {:>12} | {:>12} | {ratio:>12} |",
            fmt(*ours),
            fmt(*theirs)
        );
    }
}

impl EpochReport {
    /// The table rows of the epoch comparison.
    pub fn rows(&self) -> Vec<Row> {
        let t = self.pytorch.as_ref();
        vec![
            (
                format!("epoch wall time ({} steps)", self.ours.steps),
                Some(self.ours.seconds),
                t.map(|t| t.seconds),
                Unit::Seconds,
            ),
            (
                "training slices/s over the epoch".into(),
                Some(self.ours.slices_per_s(self.batch)),
                t.map(|t| t.slices_per_s(self.batch)),
                Unit::PerSecond,
            ),
            (
                "step incl. waiting for data, median".into(),
                Some(self.ours.step.median),
                t.map(|t| t.step.median),
                Unit::Seconds,
            ),
            (
                "loader start to first batch".into(),
                Some(self.ours.first_batch_s),
                t.map(|t| t.first_batch_s),
                Unit::Seconds,
            ),
            (
                "time waiting for data (ours)".into(),
                Some(self.ours_loader_wait_s),
                None,
                Unit::Seconds,
            ),
        ]
    }
}

impl ConfigReport {
    /// One row per part of the step ([`crate::step::PARTS`]), ours and PyTorch's medians.
    pub fn part_rows(&self) -> Vec<Row> {
        let theirs = self.pytorch.as_ref().and_then(|t| t.parts.as_ref());
        let mut rows: Vec<Row> = self
            .parts
            .iter()
            .map(|(name, s)| {
                let label = crate::step::parts()
                    .find(|(p, _)| p == name)
                    .map_or(name.clone(), |(p, what)| format!("{p}: {what}"));
                (
                    label,
                    Some(s.median),
                    theirs.and_then(|t| t.get(name)).map(|t| t.median),
                    Unit::Seconds,
                )
            })
            .collect();
        let sum = |f: &dyn Fn(&str) -> Option<f64>| -> Option<f64> {
            self.parts.iter().map(|(n, _)| f(n)).sum()
        };
        rows.push((
            "sum of the parts".into(),
            sum(&|n| {
                self.parts
                    .iter()
                    .find(|(p, _)| p == n)
                    .map(|(_, s)| s.median)
            }),
            theirs.and_then(|t| sum(&|n| t.get(n).map(|s| s.median))),
            Unit::Seconds,
        ));
        rows
    }

    /// The table rows of this configuration.
    pub fn rows(&self) -> Vec<Row> {
        let t = self.pytorch.as_ref();
        let mut rows: Vec<Row> = vec![
            (
                "train step, median".into(),
                Some(self.step.median),
                t.map(|t| t.step.median),
                Unit::Seconds,
            ),
            (
                "train step CPU time (user+sys), median".into(),
                self.step_cpu.as_ref().map(|s| s.median),
                t.and_then(|t| t.step_cpu.as_ref()).map(|s| s.median),
                Unit::Seconds,
            ),
            (
                "train step, p10".into(),
                Some(self.step.p10),
                t.map(|t| t.step.p10),
                Unit::Seconds,
            ),
            (
                "train step, p90".into(),
                Some(self.step.p90),
                t.map(|t| t.step.p90),
                Unit::Seconds,
            ),
            (
                "step FLOPs (ours: flops.rs; PyTorch: FlopCounterMode)".into(),
                Some(self.flops.total as f64),
                t.and_then(|t| t.flops.step).map(|f| f as f64),
                Unit::Flops,
            ),
            (
                "achieved GFLOP/s".into(),
                Some(self.achieved_flops_per_s / 1e9),
                t.and_then(|t| t.flops.step.map(|f| f as f64 / t.step.median / 1e9)),
                Unit::Count,
            ),
        ];
        if let Some(i) = &self.infer {
            let ti = t.and_then(|t| t.infer.as_ref());
            rows.push((
                format!("inference {}x{} slices/s", i.size, i.size),
                Some(i.slices_per_s),
                ti.map(|x| x.slices_per_s),
                Unit::PerSecond,
            ));
            rows.push((
                format!("512x512x300 volume (extrapolated from {} slices)", i.slices),
                Some(i.volume_300_s),
                ti.map(|x| crate::infer::VOLUME_SLICES as f64 / x.slices_per_s),
                Unit::Seconds,
            ));
        }
        if let Some(d) = &self.data {
            rows.push((
                "data loading alone, slices/s".into(),
                Some(d.alone_slices_per_s),
                None,
                Unit::PerSecond,
            ));
            rows.push((
                "data loading during training, slices/s".into(),
                Some(d.during_training_slices_per_s),
                None,
                Unit::PerSecond,
            ));
            rows.push((
                "training consumes, slices/s".into(),
                Some(d.training_consumes_slices_per_s),
                None,
                Unit::PerSecond,
            ));
            rows.push((
                "train step with loader running".into(),
                Some(d.during_training_step_s),
                None,
                Unit::Seconds,
            ));
        }
        for phase in ["step", "infer", "data"] {
            if let Some(m) = self.memory.get(phase) {
                let theirs = t.and_then(|t| t.memory.get(phase));
                rows.push((
                    format!("peak RSS, {phase}"),
                    Some(m.peak_mb),
                    theirs.map(|x| x.peak_mb),
                    Unit::MiB,
                ));
                rows.push((
                    format!("peak RSS - RSS at start, {phase}"),
                    Some(m.peak_mb - m.base_mb),
                    theirs.map(|x| x.peak_mb - x.base_mb),
                    Unit::MiB,
                ));
            }
        }
        rows
    }
}
