//! The PyTorch side: runs `tools/pytorch_twin/bench.py` with the Rust side's settings and reads
//! the JSON it prints.

use crate::memory::PhaseMemory;
use crate::stats::Timings;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `schema` this reader understands.
pub const SCHEMA: u32 = 2;

/// What `bench.py` prints (see its docstring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorchReport {
    pub schema: u32,
    pub torch: String,
    pub threads: usize,
    pub preset: String,
    pub size: usize,
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Whether weights and inputs were channels-last (NHWC) in memory.
    #[serde(default)]
    pub channels_last: bool,
    pub step: Timings,
    /// CPU time (`time.process_time()`) of the same steps.
    #[serde(default)]
    pub step_cpu: Option<Timings>,
    /// Per-part timings under the names of [`crate::step::parts`] (`None` with `--no-parts`).
    #[serde(default)]
    pub parts: Option<BTreeMap<String, Timings>>,
    /// Losses and statistics of the first step (from the same initial weights as ours).
    pub first_step: BTreeMap<String, f64>,
    pub infer: Option<TorchInfer>,
    pub flops: TorchFlops,
    pub memory: BTreeMap<String, PhaseMemory>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorchInfer {
    pub size: usize,
    pub slices: usize,
    pub batch: usize,
    pub seconds: f64,
    pub slices_per_s: f64,
}

/// FLOPs counted by `torch.utils.flop_counter.FlopCounterMode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorchFlops {
    pub step: Option<u64>,
    pub g_forward_infer: Option<u64>,
}

/// Parses `bench.py`'s output: the last line that is a JSON object (warnings may precede it).
pub fn parse(stdout: &str) -> anyhow::Result<TorchReport> {
    let line = last_json_line(stdout).context("bench.py")?;
    let report: TorchReport =
        serde_json::from_str(line).context("bench.py's JSON does not match the expected schema")?;
    anyhow::ensure!(
        report.schema == SCHEMA,
        "bench.py wrote schema {}, this binary reads schema {SCHEMA}",
        report.schema
    );
    Ok(report)
}

/// The settings passed to `bench.py`.
#[derive(Debug, Clone)]
pub struct TorchArgs<'a> {
    pub python: &'a Path,
    pub script: &'a Path,
    pub preset: &'a str,
    pub size: usize,
    pub batch: usize,
    pub threads: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Folder with our initial weights (`Nets::save`).
    pub init: &'a Path,
    pub infer_size: usize,
    pub infer_slices: usize,
    pub infer_batch: usize,
    pub window: (f32, f32),
    /// Weights and inputs in channels-last memory format.
    pub channels_last: bool,
    /// Time the step's parts too.
    pub parts: bool,
}

/// Runs `bench.py` and parses its report.
pub fn run(a: &TorchArgs) -> anyhow::Result<TorchReport> {
    let mut cmd = Command::new(a.python);
    cmd.arg(a.script)
        .args(["--preset", a.preset])
        .args(["--size", &a.size.to_string()])
        .args(["--batch", &a.batch.to_string()])
        .args(["--threads", &a.threads.to_string()])
        .args(["--steps", &a.steps.to_string()])
        .args(["--warmup", &a.warmup.to_string()])
        .arg("--init")
        .arg(a.init)
        .args(["--infer-size", &a.infer_size.to_string()])
        .args(["--infer-slices", &a.infer_slices.to_string()])
        .args(["--infer-batch", &a.infer_batch.to_string()])
        .arg("--window")
        .args([a.window.0.to_string(), a.window.1.to_string()]);
    if a.channels_last {
        cmd.arg("--channels-last");
    }
    if !a.parts {
        cmd.arg("--no-parts");
    }
    cmd
        // the same thread count for every pool torch may use
        .env("OMP_NUM_THREADS", a.threads.to_string())
        .env("MKL_NUM_THREADS", a.threads.to_string());
    parse(&run_script(cmd, a.script)?)
}

/// Runs a twin script and returns its stdout; a failure carries the tail of its stderr.
pub fn run_script(mut cmd: Command, script: &Path) -> anyhow::Result<String> {
    tracing::debug!(?cmd, "running the PyTorch side");
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        anyhow::bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last line of `stdout` that is a JSON object (warnings may precede it).
pub fn last_json_line(stdout: &str) -> anyhow::Result<&str> {
    stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| anyhow::anyhow!("the script printed no JSON object"))
}

/// Where `bench.py` is: `NCCT2CTPA_BENCH_SCRIPT`, else `tools/pytorch_twin/bench.py` under the
/// current folder, else under the source tree this binary was built from.
pub fn default_script() -> PathBuf {
    if let Some(p) = std::env::var_os("NCCT2CTPA_BENCH_SCRIPT") {
        return PathBuf::from(p);
    }
    twin_script("bench.py")
}

/// `tools/pytorch_twin/NAME` under the current folder, else under the source tree this binary
/// was built from.
pub fn twin_script(name: &str) -> PathBuf {
    let rel = Path::new("tools/pytorch_twin").join(name);
    if rel.is_file() {
        return rel;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/pytorch_twin")
        .join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report captured from `bench.py` (tiny, 64 px, batch 2) parses, after a warning line.
    /// tests/data/bench_py_sample.json is the output of `python tools/pytorch_twin/bench.py
    /// --preset tiny --size 64 --batch 2 --threads 2 --steps 3 --warmup 1 --infer-slices 2
    /// --infer-size 64 --infer-batch 2`.
    #[test]
    fn parses_a_captured_report() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/bench_py_sample.json"
        ))
        .unwrap();
        let r = parse(&format!("UserWarning: something\n{text}")).unwrap();
        assert_eq!(
            (r.preset.as_str(), r.size, r.batch, r.threads),
            ("tiny", 64, 2, 2)
        );
        assert_eq!(r.step.samples.len(), r.steps);
        assert_eq!(r.step_cpu.as_ref().unwrap().samples.len(), r.steps);
        assert!(r.step.p10 <= r.step.median && r.step.median <= r.step.p90);
        assert!(r.first_step["loss_g"].is_finite());
        assert!(r.flops.step.unwrap() > 0);
        assert!(r.memory["step"].peak_mb >= r.memory["step"].base_mb);
        assert!(r.infer.as_ref().unwrap().slices_per_s > 0.0);
        // every part of ours is timed on the PyTorch side, under the same name
        let parts = r.parts.as_ref().unwrap();
        for (name, _) in crate::step::parts() {
            assert_eq!(parts[name].samples.len(), r.steps, "{name}");
        }
        assert_eq!(parts.len(), crate::step::parts().count());
    }

    #[test]
    fn rejects_other_schemas_and_garbage() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/bench_py_sample.json"
        ))
        .unwrap();
        let other = text.replacen("\"schema\": 2", "\"schema\": 99", 1);
        assert!(parse(&other).unwrap_err().to_string().contains("schema 99"));
        assert!(parse("Traceback (most recent call last):\n").is_err());
        assert!(parse("{\"schema\": 2}").is_err());
    }
}
