//! `ncct2ctpa synth`: write a paired chest phantom dataset (see `dataset::phantom`).

use anyhow::Context;
use dataset::phantom::{write_dataset, PhantomConfig, PhantomSize, WriteOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder (raw-dataset layout: ncct/, ctpa/, truth/, phantom.json).
    #[arg(long)]
    out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    cases: u32,
    /// Master seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest displacement of the CTPA relative to the NCCT inside the body, mm (0: aligned).
    #[arg(long, value_name = "MM", default_value_t = PhantomConfig::default().misalignment_mm)]
    misalignment: f64,
    /// Grid: small (128x128x56, 2.8 x 2.8 x 5 mm) or full (512x512x140, 0.7 x 0.7 x 2 mm).
    #[arg(long, value_enum, default_value_t = SizeArg::Small)]
    size: SizeArg,
    /// Probability that a case carries pulmonary emboli.
    #[arg(long, value_name = "P", default_value_t = PhantomConfig::default().emboli_probability)]
    emboli: f64,
    /// Scanner noise (standard deviation, HU).
    #[arg(long, value_name = "HU", default_value_t = PhantomConfig::default().noise_hu)]
    noise: f32,
    /// Bronchi beside the pulmonary arteries (the bronchovascular bundle): the airways
    /// otherwise stop at the main bronchi, and a small artery looks like a small vein in the
    /// NCCT.
    #[arg(long)]
    bronchi: bool,
    /// Also write preview/CASE.png: axial and coronal cuts of NCCT | CTPA | |difference|.
    #[arg(long)]
    preview: bool,
    /// Write into a non-empty folder, replacing this set's files (nothing else is removed).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SizeArg {
    Small,
    Full,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = PhantomConfig {
        size: match args.size {
            SizeArg::Small => PhantomSize::Small,
            SizeArg::Full => PhantomSize::Full,
        },
        seed: args.seed,
        misalignment_mm: args.misalignment,
        emboli_probability: args.emboli,
        noise_hu: args.noise,
        bronchi: args.bronchi,
    };
    let opts = WriteOptions {
        cases: args.cases as usize,
        overwrite: args.force,
        preview: args.preview,
    };
    let bar = ProgressBar::new(opts.cases as u64).with_style(
        ProgressStyle::with_template("{spinner} synth [{bar:30}] {pos}/{len} cases {msg} ({eta})")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let result = write_dataset(&args.out, &cfg, &opts, &|c| {
        bar.set_message(format!("{}: {} emboli", c.name, c.emboli));
        bar.inc(1);
    });
    bar.finish_and_clear();
    let summary = result.with_context(|| {
        format!(
            "could not write the phantom set to {}{}",
            args.out.display(),
            if args.force {
                ""
            } else {
                " (pass --force to write into a non-empty folder)"
            }
        )
    })?;
    let emboli: usize = summary.cases.iter().map(|c| c.emboli).sum();
    tracing::info!(
        "wrote {} phantom pairs ({} emboli in all) to {} in {:.1} s",
        summary.cases.len(),
        emboli,
        summary.root.display(),
        summary.seconds
    );
    Ok(ExitCode::SUCCESS)
}
