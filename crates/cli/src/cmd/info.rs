//! `ncct2ctpa info`: what a volume file or DICOM folder holds, so a user can check it before
//! using it (shape, spacing, origin, direction, HU range, datatype; for DICOM, every series).
//!
//! `--model` (a model's parameter counts) is a separate branch, answered by its own function.

use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use volume::io::{dicom, nifti};
use volume::Volume;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A NIfTI file (.nii, .nii.gz) or a folder holding a DICOM series.
    #[arg(required_unless_present = "model")]
    pub input: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// For a DICOM folder: the SeriesInstanceUID to describe (default: the largest CT series).
    #[arg(long)]
    pub series: Option<String>,
    /// Print a model's parameter counts (G, R, D) instead of a file's header.
    #[arg(long, conflicts_with = "input")]
    pub model: bool,
    /// With --model: the preset to describe (default, tiny, reggan).
    #[arg(long, requires = "model", default_value = "default")]
    pub preset: String,
}

/// The report `info` prints for a volume.
#[derive(Debug, Serialize)]
struct VolumeInfo {
    path: PathBuf,
    format: &'static str,
    /// Voxel type stored in the file (NIfTI), or "int16/uint16 + rescale" style for DICOM.
    datatype: String,
    /// (x, y, z), as ITK reports it.
    size: [usize; 3],
    spacing: [f64; 3],
    origin: [f64; 3],
    /// Row-major 3x3; columns are the LPS directions of the index axes.
    direction: [[f64; 3]; 3],
    /// Minimum and maximum value after scaling (HU for CT).
    range: Option<(f32, f32)>,
    /// NIfTI: which header transform gave the geometry (sform, qform or none).
    #[serde(skip_serializing_if = "Option::is_none")]
    transform: Option<nifti::TransformSource>,
    /// DICOM: the series read and every series in the folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    series_uid: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    series: Vec<dicom::SeriesSummary>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.model {
        return model_summary(&args.preset, args.json);
    }
    let input = args.input.context("no input given")?;
    let info = describe(&input, args.series.as_deref())?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_text(&info);
    }
    Ok(ExitCode::SUCCESS)
}

/// The model branch: parameter counts of each network of a preset, counted on the real
/// modules (`model::summary`).
fn model_summary(preset: &str, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = model::config::ModelConfig::preset(preset)?;
    let summary = model::summary::ModelSummary::for_config(&cfg);
    if json {
        let value = serde_json::json!({ "preset": preset, "summary": summary });
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        outln!("preset: {preset}");
        outln!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(input: &Path, series: Option<&str>) -> anyhow::Result<VolumeInfo> {
    let dicom_file = !input.is_dir() && volume::io::sniff(input)? == volume::io::FileFormat::Dicom;
    if input.is_dir() || dicom_file {
        let s = dicom::read_series(input, series)?;
        // a folder lists every series it holds; one file, whatever its name, is one series
        let list = match dicom_file {
            true => vec![s.summary.clone()],
            false => dicom::list_series(input)?,
        };
        Ok(base(
            input,
            "DICOM",
            s.summary.transfer_syntax.clone(),
            &s.volume,
            None,
        )
        .with_series(s.series_uid, list))
    } else {
        if series.is_some() {
            anyhow::bail!(
                "--series applies to DICOM, not to the NIfTI file {}",
                input.display()
            );
        }
        let img = nifti::read_nifti_file(input)?;
        let dt = img.header.datatype.name().to_string();
        Ok(base(input, "NIfTI-1", dt, &img.volume, Some(img.transform)))
    }
}

fn base(
    path: &Path,
    format: &'static str,
    datatype: String,
    v: &Volume,
    transform: Option<nifti::TransformSource>,
) -> VolumeInfo {
    VolumeInfo {
        path: path.to_path_buf(),
        format,
        datatype,
        size: v.size_xyz(),
        spacing: v.geometry.spacing,
        origin: v.geometry.origin,
        direction: v.geometry.direction,
        range: v.value_range(),
        transform,
        series_uid: None,
        series: Vec::new(),
    }
}

impl VolumeInfo {
    fn with_series(mut self, uid: String, list: Vec<dicom::SeriesSummary>) -> Self {
        self.series_uid = Some(uid);
        self.series = list;
        self
    }
}

fn print_text(i: &VolumeInfo) {
    outln!("{}", i.path.display());
    outln!("  format     {}", i.format);
    if i.format == "DICOM" {
        outln!("  transfer   {}", i.datatype);
    } else {
        outln!("  datatype   {}", i.datatype);
    }
    outln!(
        "  size       {} x {} x {} (x, y, z)",
        i.size[0],
        i.size[1],
        i.size[2]
    );
    outln!(
        "  spacing    {:.4} x {:.4} x {:.4} mm",
        i.spacing[0],
        i.spacing[1],
        i.spacing[2]
    );
    outln!(
        "  origin     ({:.3}, {:.3}, {:.3}) mm LPS",
        i.origin[0],
        i.origin[1],
        i.origin[2]
    );
    for (r, row) in i.direction.iter().enumerate() {
        let label = if r == 0 { "direction" } else { "" };
        outln!(
            "  {label:<10} [{:+.5} {:+.5} {:+.5}]",
            row[0],
            row[1],
            row[2]
        );
    }
    match i.range {
        Some((lo, hi)) => outln!("  range      {lo} .. {hi}"),
        None => outln!("  range      (all NaN)"),
    }
    if let Some(t) = i.transform {
        outln!("  geometry   from {t:?}");
    }
    if let Some(uid) = &i.series_uid {
        outln!("  series     {uid} (read)");
        for s in &i.series {
            let mark = if &s.uid == uid { "*" } else { " " };
            // what the series choice looks at: slices, thickness, kernel, extent
            outln!(
                "   {mark} {} {} ({} files, {}x{})",
                s.uid,
                s.line(),
                s.files,
                s.columns,
                s.rows
            );
        }
    }
}
