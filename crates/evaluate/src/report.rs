//! Results of an evaluation: per-case CSV, summary JSON and the printed table.
//!
//! The per-case CSV is *long* (one row per case, region and metric):
//!
//! ```text
//! case,region,voxels,metric,model,baseline
//! case_000,body,183204,mae,41.23,96.8
//! ```
//!
//! Metrics: `mae`, `psnr`, `ssim` and `me`, the signed mean error (prediction minus target,
//! HU): inside the vessels it says how much of the enhancement is missing.
//!
//! Long rather than wide because its columns never change: adding a region (a custom mask) or
//! a metric adds rows, so scripts keep working, and one `pivot` in pandas or R gives any wide
//! view. `baseline` is the NCCT scored as if it were the prediction (empty without `--ncct`);
//! a value is empty where the region is empty in that case. Non-finite values are written
//! `inf`/`NaN` (a PSNR of identical volumes is `inf`).

use metrics::{Cumulative, Metric, RegionScores, Summary};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

/// One region of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionResult {
    pub region: String,
    pub model: RegionScores,
    /// The NCCT-as-prediction scores, when NCCTs were given.
    pub baseline: Option<RegionScores>,
}

/// All regions of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: String,
    pub pred: PathBuf,
    pub target: PathBuf,
    pub ncct: Option<PathBuf>,
    pub regions: Vec<RegionResult>,
}

/// Summary of one metric in one region over the cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub region: String,
    pub metric: Metric,
    pub unit: String,
    pub model: Summary,
    pub baseline: Option<Summary>,
    /// Cases where the model beats the baseline (lower MAE, higher PSNR and SSIM, a mean
    /// error closer to 0).
    pub model_better: Option<usize>,
    /// On mean-error rows: the target's mean HU in the region over the cases (the
    /// prediction's mean is this plus the mean error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_mean: Option<Summary>,
}

/// Summary rows, region by region in the order scored, metrics in [`Metric::ALL`] order.
pub fn summarize(cases: &[CaseResult], regions: &[String], baseline: bool) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for region in regions {
        for metric in Metric::ALL {
            let (mut model, mut base) = (Cumulative::new(), Cumulative::new());
            let mut target = Cumulative::new();
            let mut better = 0;
            for r in cases
                .iter()
                .flat_map(|c| &c.regions)
                .filter(|r| &r.region == region)
            {
                let m = r.model.get(metric);
                let b = r.baseline.and_then(|b| b.get(metric));
                if let Some(m) = m {
                    model.update(m);
                }
                if let Some(b) = b {
                    base.update(b);
                }
                if let Some(t) = r.model.target_mean {
                    target.update(t);
                }
                if let (Some(m), Some(b)) = (m, b) {
                    better += usize::from(metric.better(m, b));
                }
            }
            rows.push(SummaryRow {
                region: region.clone(),
                metric,
                unit: metric.unit().to_owned(),
                model: model.aggregate(),
                baseline: baseline.then(|| base.aggregate()),
                model_better: baseline.then_some(better),
                target_mean: (metric == Metric::Me).then(|| target.aggregate()),
            });
        }
    }
    rows
}

/// A CSV field: quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A value as CSV text: shortest exact decimal, `inf`/`NaN`, or empty for a missing value.
fn csv_value(v: Option<f64>) -> String {
    match v {
        None => String::new(),
        Some(v) if v.is_nan() => "NaN".into(),
        Some(v) if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.into(),
        Some(v) => format!("{v}"),
    }
}

/// Writes the per-case CSV (see the module docs for its columns).
pub fn write_csv(cases: &[CaseResult], w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(w, "case,region,voxels,metric,model,baseline")?;
    for c in cases {
        for r in &c.regions {
            for metric in Metric::ALL {
                writeln!(
                    w,
                    "{},{},{},{},{},{}",
                    csv_field(&c.case),
                    csv_field(&r.region),
                    r.model.voxels,
                    metric.name(),
                    csv_value(r.model.get(metric)),
                    csv_value(r.baseline.and_then(|b| b.get(metric))),
                )?;
            }
        }
    }
    Ok(())
}

/// `mean ± sd` with a metric-appropriate precision.
fn mean_sd(s: &Summary, metric: Metric) -> String {
    let p = if metric == Metric::Ssim { 4 } else { 2 };
    match s.n {
        0 => "-".into(),
        1 => format!("{:.p$}", s.mean),
        _ => format!("{:.p$} ± {:.p$}", s.mean, s.sd),
    }
}

fn median(s: &Summary, metric: Metric) -> String {
    let p = if metric == Metric::Ssim { 4 } else { 2 };
    if s.n == 0 {
        "-".into()
    } else {
        format!("{:.p$}", s.median)
    }
}

/// The summary as an aligned text table.
pub fn table(rows: &[SummaryRow]) -> String {
    let baseline = rows.iter().any(|r| r.baseline.is_some());
    let mut lines: Vec<Vec<String>> = vec![{
        let mut h = vec!["region", "metric", "n", "model mean ± sd", "median"];
        if baseline {
            h.extend(["NCCT baseline mean ± sd", "median", "model better"]);
        }
        h.into_iter().map(str::to_owned).collect()
    }];
    for r in rows {
        let metric = if r.unit.is_empty() {
            r.metric.name().to_uppercase()
        } else {
            format!("{} ({})", r.metric.name().to_uppercase(), r.unit)
        };
        let mut line = vec![
            r.region.clone(),
            metric,
            r.model.n.to_string(),
            mean_sd(&r.model, r.metric),
            median(&r.model, r.metric),
        ];
        if let Some(b) = &r.baseline {
            line.push(mean_sd(b, r.metric));
            line.push(median(b, r.metric));
            line.push(format!(
                "{}/{}",
                r.model_better.unwrap_or(0),
                r.model.n.min(b.n)
            ));
        } else if baseline {
            line.extend(["-".to_owned(), "-".to_owned(), "-".to_owned()]);
        }
        lines.push(line);
    }
    let ncol = lines[0].len();
    let widths: Vec<usize> = (0..ncol)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(mae: f64, psnr: f64, ssim: f64, me: f64) -> RegionScores {
        RegionScores {
            voxels: 10,
            mae: Some(mae),
            psnr: Some(psnr),
            ssim: Some(ssim),
            me: Some(me),
            target_mean: Some(100.0 + mae),
        }
    }

    fn cases() -> Vec<CaseResult> {
        let case = |name: &str, m: RegionScores, b: RegionScores| CaseResult {
            case: name.into(),
            pred: "p".into(),
            target: "t".into(),
            ncct: Some("n".into()),
            regions: vec![RegionResult {
                region: "body".into(),
                model: m,
                baseline: Some(b),
            }],
        };
        vec![
            case(
                "a",
                scores(10.0, 40.0, 0.9, -5.0),
                scores(30.0, 30.0, 0.8, 3.0),
            ),
            case(
                "b,1",
                scores(20.0, 35.0, 0.85, -8.0),
                scores(15.0, 36.0, 0.8, -20.0),
            ),
            case("c", RegionScores::EMPTY, RegionScores::EMPTY),
        ]
    }

    #[test]
    fn csv_is_long_quoted_and_leaves_missing_values_empty() {
        let mut buf = Vec::new();
        write_csv(&cases(), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "case,region,voxels,metric,model,baseline");
        assert_eq!(lines[1], "a,body,10,mae,10,30");
        assert_eq!(lines[7], "\"b,1\",body,10,ssim,0.85,0.8");
        assert_eq!(lines[4], "a,body,10,me,-5,3");
        assert_eq!(lines[9], "c,body,0,mae,,");
        assert_eq!(lines.len(), 1 + 3 * 4);
    }

    #[test]
    fn summary_skips_empty_regions_and_counts_wins() {
        let rows = summarize(&cases(), &["body".into()], true);
        assert_eq!(rows.len(), 4);
        let mae = &rows[0];
        assert_eq!(mae.metric, Metric::Mae);
        assert_eq!(mae.model.n, 2);
        assert_eq!(mae.model.mean, 15.0);
        assert_eq!(mae.baseline.unwrap().mean, 22.5);
        assert_eq!(mae.model_better, Some(1)); // 10 < 30, but 20 > 15
        assert_eq!(rows[2].model_better, Some(2)); // SSIM higher in both
        let me = &rows[3];
        assert_eq!(me.metric, Metric::Me);
        assert_eq!(me.model_better, Some(1)); // |-5| > |3|, |-8| < |-20|
        assert_eq!(me.target_mean.unwrap().mean, 115.0);
        assert!(rows[0].target_mean.is_none());
        let t = table(&rows);
        assert!(t.contains("MAE (HU)"), "{t}");
        assert!(t.contains("15.00 ± 7.07"), "{t}");
        assert!(t.contains("1/2"), "{t}");
    }
}
