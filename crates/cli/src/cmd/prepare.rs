//! `ncct2ctpa prepare`: a raw paired dataset in, a prepared dataset for training out
//! (see `dataset::prepare`). Prints what discovery skipped, a progress bar, and a per-case
//! report table; exits non-zero when no case could be used.

use anyhow::Context;
use dataset::manifest::{AlignMode, IntensityWindow, SpacingMode, SplitFractions};
use dataset::prepare::{prepare, CaseReport, CaseStatus, PrepareOptions, SplitChoice};
use dataset::raw::discover;
use indicatif::{ProgressBar, ProgressStyle};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use volume::io::dicom::SeriesRule;
use volume::register::Similarity;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Raw dataset: ncct/CASE.nii.gz (or ncct/CASE/ DICOM folders), ctpa/CASE..., optional
    /// lung/CASE.nii.gz.
    #[arg(value_name = "RAW_DIR")]
    raw: PathBuf,
    /// Output folder (manifest.json, split.json, cases/).
    #[arg(long, value_name = "PREPARED_DIR")]
    out: PathBuf,
    /// Voxel spacing X,Y,Z in mm of the common grid, or `auto`: the NCCT's in-plane spacing
    /// and the coarser slice spacing of the pair.
    #[arg(long, value_name = "X,Y,Z|auto", default_value = "auto", value_parser = parse_spacing)]
    spacing: SpacingMode,
    /// HU window MIN,MAX mapped to [-1, 1] for the network (stored in the manifest).
    #[arg(long, value_name = "MIN,MAX", default_value = "-1024,1500",
          value_parser = parse_window, allow_hyphen_values = true)]
    window: IntensityWindow,
    /// Rigidly pre-align the CTPA to the NCCT (rigid), or use them as they lie (none).
    #[arg(long, value_enum, default_value_t = AlignArg::Rigid)]
    align: AlignArg,
    /// Similarity the rigid alignment maximises: normalised cross-correlation (ncc), or Mattes
    /// mutual information (mattes-mi), which does not assume the CTPA's intensities are a
    /// linear function of the NCCT's (contrast brightens only the blood). Recorded per case in
    /// the manifest.
    #[arg(long, value_enum, default_value_t = SimilarityArg::Ncc)]
    similarity: SimilarityArg,
    /// Histogram bins per image of mattes-mi (5 to 1024).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(5..=1024))]
    mi_bins: u16,
    /// DICOM folders holding several series: read the one whose SeriesDescription matches
    /// this regular expression (case-insensitive), e.g. "ctpa|angio|thorax". Localizers and
    /// single-position series (bolus tracking) are never read; among the matching series the
    /// one with the most slice positions wins. Applies to NCCT and CTPA folders.
    #[arg(long, value_name = "REGEX")]
    series_description: Option<String>,
    /// ... whose ConvolutionKernel matches this regular expression, e.g. "b3|b4|standard".
    #[arg(long, value_name = "REGEX")]
    series_kernel: Option<String>,
    /// ... whose SliceThickness (mm) lies in MIN:MAX, e.g. 0.5:1.5.
    #[arg(long, value_name = "MIN:MAX", value_parser = parse_thickness)]
    series_thickness: Option<[f64; 2]>,
    /// Seed of the train/val/test split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Split fractions TRAIN,VAL,TEST (patient-level).
    #[arg(long, value_name = "TRAIN,VAL,TEST", default_value = "0.7,0.15,0.15",
          value_parser = parse_split, conflicts_with = "split_file")]
    split: SplitFractions,
    /// A split file instead of the seeded split: {"CASE": "train"|"val"|"test", ...} or
    /// {"train": [CASE, ...], "val": [...], "test": [...]} (a previous run's split.json works).
    #[arg(long, value_name = "FILE")]
    split_file: Option<PathBuf>,
    /// Cases prepared at once (0: one per CPU core). Each holds a few copies of its volumes
    /// in memory, about 2 GB for a 512 x 512 x 400 pair.
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Write the manifest without the cases that failed instead of failing (by default a
    /// failed case fails the prepare and the earlier manifest stays in force).
    #[arg(long)]
    allow_failed_cases: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AlignArg {
    Rigid,
    None,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SimilarityArg {
    Ncc,
    MattesMi,
}

fn parse_numbers<const N: usize>(s: &str, what: &str) -> Result<[f64; N], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != N {
        return Err(format!(
            "expected {what}: {N} comma-separated numbers, got {s:?}"
        ));
    }
    let mut out = [0.0; N];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p
            .parse::<f64>()
            .map_err(|e| format!("{p:?} in {s:?} is not a number: {e}"))?;
        if !o.is_finite() {
            return Err(format!("{p:?} in {s:?} is not finite"));
        }
    }
    Ok(out)
}

fn parse_spacing(s: &str) -> Result<SpacingMode, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(SpacingMode::Auto);
    }
    let v = parse_numbers::<3>(s, "X,Y,Z")?;
    if v.iter().any(|x| *x <= 0.0) {
        return Err(format!("spacing must be positive, got {s:?}"));
    }
    Ok(SpacingMode::Fixed(v))
}

fn parse_window(s: &str) -> Result<IntensityWindow, String> {
    let [lo, hi] = parse_numbers::<2>(s, "MIN,MAX")?;
    IntensityWindow::new(lo as f32, hi as f32)
}

fn parse_split(s: &str) -> Result<SplitFractions, String> {
    SplitFractions::new(parse_numbers::<3>(s, "TRAIN,VAL,TEST")?).map_err(|e| e.to_string())
}

fn status_word(c: &CaseReport) -> &'static str {
    match c.status {
        CaseStatus::Prepared(_) => "prepared",
        CaseStatus::Reused(_) => "kept",
        CaseStatus::Failed(_) => "FAILED",
    }
}

/// The per-case table printed at the end.
fn report_table(cases: &[CaseReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<5} {:<8} {:>6} {:>17} {:>8} {:>8}  {:<42} {:>6}",
        "case",
        "split",
        "status",
        "slices",
        "spacing mm",
        "body mL",
        "lung mL",
        "rigid: similarity before -> after",
        "s"
    );
    for c in cases {
        let Some(m) = c.meta() else {
            let _ = writeln!(
                s,
                "{:<16} {:<5} {:<8} {:>6} {:>17} {:>8} {:>8}  {:<42} {:>6.1}",
                c.case,
                c.split,
                status_word(c),
                "-",
                "-",
                "-",
                "-",
                "-",
                c.seconds
            );
            continue;
        };
        let sp = m.grid.geometry.spacing;
        let align = match &m.alignment {
            Some(a) => format!(
                "{} {:.3} -> {:.3} ({:.1}°, {:.1} mm)",
                a.metric, a.before, a.after, a.rotation_deg, a.translation_mm
            ),
            None => "off".to_owned(),
        };
        let lung = format!(
            "{:.0}{}",
            m.masks.lung_ml,
            match m.masks.lung_source {
                dataset::manifest::MaskSource::Supplied => "*",
                dataset::manifest::MaskSource::Computed => "",
            }
        );
        let _ = writeln!(
            s,
            "{:<16} {:<5} {:<8} {:>6} {:>17} {:>8.0} {:>8}  {:<42} {:>6.1}",
            c.case,
            c.split,
            status_word(c),
            m.slices(),
            format!("{:.2}x{:.2}x{:.2}", sp[0], sp[1], sp[2]),
            m.masks.body_ml,
            lung,
            align,
            c.seconds
        );
    }
    s
}

fn parse_thickness(s: &str) -> Result<[f64; 2], String> {
    let (lo, hi) = s
        .split_once(':')
        .ok_or_else(|| format!("expected MIN:MAX in mm, got {s:?}"))?;
    let num = |p: &str| {
        p.trim()
            .parse::<f64>()
            .map_err(|e| format!("{p:?} in {s:?} is not a number: {e}"))
    };
    Ok([num(lo)?, num(hi)?])
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let discovery = discover(&args.raw)
        .with_context(|| format!("no usable dataset in {}", args.raw.display()))?;
    for s in &discovery.skipped {
        tracing::warn!("skipped {s}");
    }
    tracing::info!(
        "{}: {} pairs found, {} entries skipped",
        args.raw.display(),
        discovery.pairs.len(),
        discovery.skipped.len()
    );

    let mut opts = PrepareOptions {
        window: args.window,
        split: match &args.split_file {
            Some(f) => SplitChoice::File(f.clone()),
            None => SplitChoice::Seeded {
                seed: args.seed,
                fractions: args.split,
            },
        },
        jobs: args.jobs,
        allow_failed_cases: args.allow_failed_cases,
        ..PrepareOptions::default()
    };
    opts.settings.spacing = args.spacing;
    opts.settings.align = match args.align {
        AlignArg::Rigid => AlignMode::Rigid,
        AlignArg::None => AlignMode::None,
    };
    opts.settings.rigid.metric = match args.similarity {
        SimilarityArg::Ncc => Similarity::Ncc,
        SimilarityArg::MattesMi => Similarity::MattesMi,
    };
    opts.settings.rigid.mi_bins = usize::from(args.mi_bins);
    opts.settings.series = SeriesRule {
        description: args.series_description.clone(),
        kernel: args.series_kernel.clone(),
        thickness_mm: args.series_thickness,
    };
    opts.settings
        .series
        .validate()
        .map_err(|e| anyhow::anyhow!("--series-*: {e}"))?;

    let bar = ProgressBar::new(discovery.pairs.len() as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} prepare [{bar:30}] {pos}/{len} cases {msg} ({eta})",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let result = prepare(&discovery, &args.out, &opts, &|c| {
        bar.set_message(format!("{}: {}", c.case, status_word(c)));
        bar.inc(1);
    });
    bar.finish_and_clear();
    if let Err(dataset::prepare::PrepareError::CasesFailed { cases, .. }) = &result {
        out!("{}", report_table(cases));
    }
    let report = result.with_context(|| {
        format!(
            "could not prepare {} into {}",
            args.raw.display(),
            args.out.display()
        )
    })?;

    out!("{}", report_table(&report.cases));
    let failed: Vec<&CaseReport> = report
        .cases
        .iter()
        .filter(|c| matches!(c.status, CaseStatus::Failed(_)))
        .collect();
    for c in &failed {
        if let CaseStatus::Failed(reason) = &c.status {
            outln!("failed   {}: {reason}", c.case);
        }
    }
    for s in &report.discovery_skipped {
        outln!("skipped  {s}");
    }
    let prepared = report.count(|s| matches!(s, CaseStatus::Prepared(_)));
    let kept = report.count(|s| matches!(s, CaseStatus::Reused(_)));
    let secs = report.elapsed.as_secs_f64();
    outln!(
        "{} cases in {} ({} prepared, {} kept as already prepared, {} failed, {} skipped) in {:.1} s{}",
        report.manifest.cases.len(),
        report.out.display(),
        prepared,
        kept,
        failed.len(),
        report.discovery_skipped.len(),
        secs,
        if prepared > 0 {
            format!(" ({:.2} s per prepared case)", secs / prepared as f64)
        } else {
            String::new()
        }
    );
    if report
        .manifest
        .cases
        .iter()
        .any(|c| c.meta.masks.lung_source == dataset::manifest::MaskSource::Supplied)
    {
        outln!("* lung mask supplied in lung/");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_rejects_bad_ones() {
        assert_eq!(parse_spacing("auto").unwrap(), SpacingMode::Auto);
        assert_eq!(
            parse_spacing("0.7, 0.7,2").unwrap(),
            SpacingMode::Fixed([0.7, 0.7, 2.0])
        );
        assert!(parse_spacing("1,1").is_err());
        assert!(parse_spacing("1,0,1").is_err());
        assert!(parse_spacing("1,x,1").is_err());
        assert_eq!(
            parse_window("-1000,400").unwrap(),
            IntensityWindow::new(-1000.0, 400.0).unwrap()
        );
        assert!(parse_window("400,-1000").is_err());
        assert!(parse_split("0.8,0.1,0.1").is_ok());
        assert!(parse_split("0.8,0.3,0.1").is_err());
    }

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn similarity_flags_parse_and_default_to_ncc() {
        use clap::Parser;
        let w = Wrap::try_parse_from(["p", "raw", "--out", "o"]).unwrap();
        assert!(matches!(w.args.similarity, SimilarityArg::Ncc));
        assert_eq!(w.args.mi_bins, 50);
        let w = Wrap::try_parse_from([
            "p",
            "raw",
            "--out",
            "o",
            "--similarity",
            "mattes-mi",
            "--mi-bins",
            "32",
        ])
        .unwrap();
        assert!(matches!(w.args.similarity, SimilarityArg::MattesMi));
        assert_eq!(w.args.mi_bins, 32);
        for bad in [["--mi-bins", "4"], ["--similarity", "mi"]] {
            let mut argv = vec!["p", "raw", "--out", "o"];
            argv.extend(bad);
            assert!(Wrap::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
