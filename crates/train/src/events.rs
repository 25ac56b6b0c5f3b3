//! The run's two logs: `metrics.jsonl` for machines and `train.log` for people.
//!
//! `metrics.jsonl` holds one JSON object per line, each with `step` (the number of optimizer
//! steps completed) and `event` (`"train"`, `"val"`, `"checkpoint"`, `"start"`, `"resume"`,
//! `"end"`, `"error"`), then named fields in a fixed order. Lines are written whole and flushed,
//! so a killed run leaves at most its last line incomplete; on `--resume` the file is cut back to
//! the resumed step ([`EventLog::open_resumed`]), so the curves continue without duplicates or
//! gaps.

use anyhow::Context;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A log file opened for appending, or none (the data-parallel ranks other than 0, which
/// share rank 0's run folder and leave it to rank 0): what both logs write through.
#[derive(Debug)]
struct Appender {
    path: PathBuf,
    file: Option<File>,
}

impl Appender {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    fn disabled() -> Self {
        Self {
            path: PathBuf::new(),
            file: None,
        }
    }

    /// Writes `bytes` and flushes (nothing when disabled).
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes).and_then(|()| f.flush()),
            None => Ok(()),
        }
    }
}

/// Appends events to `metrics.jsonl` (or nowhere: [`EventLog::disabled`]).
#[derive(Debug)]
pub struct EventLog(Appender);

impl EventLog {
    /// Opens (creating) the log for appending.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Appender::open(path).map(Self)
    }

    /// A log that writes nothing (the data-parallel ranks other than 0).
    pub fn disabled() -> Self {
        Self(Appender::disabled())
    }

    /// Opens the log of a run resumed at `step`: events after `step` (written after the
    /// checkpoint by the interrupted process) and any incomplete last line are dropped, through
    /// an atomic rewrite, so the resumed run's events follow on directly.
    pub fn open_resumed(path: &Path, step: u64) -> anyhow::Result<Self> {
        if path.exists() {
            let kept: Vec<String> = read_lines(path)?
                .into_iter()
                .filter(|(v, _)| {
                    v.get("step")
                        .and_then(Value::as_u64)
                        .is_some_and(|s| s <= step)
                })
                .map(|(_, line)| line)
                .collect();
            util::atomic::write_atomic(path, |w| {
                for line in &kept {
                    writeln!(w, "{line}")?;
                }
                Ok(())
            })
            .with_context(|| format!("trimming {} to step {step}", path.display()))?;
        }
        Self::open(path)
    }

    /// Writes one event: `{"step": step, "event": event, fields...}`. Non-finite numbers
    /// become `null` (JSON has no NaN).
    pub fn write(
        &mut self,
        step: u64,
        event: &str,
        fields: &[(&str, Value)],
    ) -> anyhow::Result<()> {
        let mut line = format!("{{\"step\":{step},\"event\":{}", Value::from(event));
        for (k, v) in fields {
            line.push(',');
            line.push_str(&Value::from(*k).to_string());
            line.push(':');
            line.push_str(&v.to_string());
        }
        line.push_str("}\n");
        let log = &mut self.0;
        log.append(line.as_bytes())
            .with_context(|| format!("writing {}", log.path.display()))
    }
}

/// Every complete event of a `metrics.jsonl`, in order (an incomplete or corrupt line, such as
/// the last line of a killed run, is skipped).
pub fn read_events(path: &Path) -> anyhow::Result<Vec<Value>> {
    Ok(read_lines(path)?.into_iter().map(|(v, _)| v).collect())
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<(Value, String)>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v.is_object() => out.push((v, line)),
            _ => tracing::warn!(
                "{}: line {} is not a complete event, skipped",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// A JSON number, or `null` when not finite.
pub fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// The human log, `train.log`: timestamped lines, appended (or nowhere:
/// [`HumanLog::disabled`]).
#[derive(Debug)]
pub struct HumanLog(Appender);

impl HumanLog {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Appender::open(path).map(Self)
    }

    /// A log that writes nothing (the data-parallel ranks other than 0).
    pub fn disabled() -> Self {
        Self(Appender::disabled())
    }

    /// Appends `message` (may span lines) with a UTC timestamp. Failing to write the log is
    /// reported once through tracing and otherwise ignored: it must not stop a training run.
    pub fn line(&mut self, message: &str) {
        let stamp = utc_timestamp(SystemTime::now());
        let mut text = String::new();
        for l in message.lines() {
            text.push_str(&format!("{stamp}  {l}\n"));
        }
        if let Err(e) = self.0.append(text.as_bytes()) {
            tracing::warn!("cannot write {}: {e}", self.0.path.display());
        }
    }
}

/// `YYYY-MM-DD HH:MM:SSZ` for a point in time (UTC; no time-zone database needed).
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_match_known_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00Z");
        // 2000-02-29 12:34:56 UTC = 951827696
        let t = UNIX_EPOCH + Duration::from_secs(951_827_696);
        assert_eq!(utc_timestamp(t), "2000-02-29 12:34:56Z");
        // 2026-11-25 00:00:00 UTC = 1795564800
        let t = UNIX_EPOCH + Duration::from_secs(1_795_564_800);
        assert_eq!(utc_timestamp(t), "2026-11-25 00:00:00Z");
    }

    #[test]
    fn events_round_trip_and_resume_trims_later_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("metrics.jsonl");
        let mut log = EventLog::open(&p).unwrap();
        for s in 1..=5u64 {
            log.write(
                s,
                "train",
                &[("loss", num(s as f64 * 0.5)), ("bad", num(f64::NAN))],
            )
            .unwrap();
        }
        drop(log);
        // A killed writer's partial last line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"step\":6,\"ev")
            .unwrap();
        let ev = read_events(&p).unwrap();
        assert_eq!(ev.len(), 5);
        assert_eq!(ev[0]["event"], "train");
        assert_eq!(ev[1]["loss"], 1.0);
        assert!(ev[0]["bad"].is_null());
        let mut log = EventLog::open_resumed(&p, 3).unwrap();
        log.write(4, "resume", &[]).unwrap();
        let ev = read_events(&p).unwrap();
        let steps: Vec<u64> = ev.iter().map(|e| e["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert_eq!(ev[3]["event"], "resume");
    }
}
