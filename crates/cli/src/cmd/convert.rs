//! `ncct2ctpa convert`: a DICOM series (or any volume we read) to NIfTI, written atomically with
//! SimpleITK's geometry, as dcm2niix users expect.

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use volume::io::{dicom, is_nifti_path, nifti, read_volume};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A DICOM series folder, a single DICOM file or a NIfTI file (told by content, whatever
    /// the name).
    pub input: PathBuf,
    /// Output NIfTI file (.nii or .nii.gz); float32 HU.
    #[arg(long)]
    pub out: PathBuf,
    /// For a DICOM folder: the SeriesInstanceUID to convert (default: the largest CT series).
    #[arg(long)]
    pub series: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !is_nifti_path(&args.out) {
        anyhow::bail!(
            "{}: the output must be a .nii or .nii.gz file",
            args.out.display()
        );
    }
    let dicom_input =
        args.input.is_dir() || volume::io::sniff(&args.input)? == volume::io::FileFormat::Dicom;
    let volume = if dicom_input {
        dicom::read_series(&args.input, args.series.as_deref())?.volume
    } else {
        if args.series.is_some() {
            anyhow::bail!(
                "--series applies to DICOM, not to the NIfTI file {}",
                args.input.display()
            );
        }
        read_volume(&args.input)?
    };
    nifti::write_nifti(&args.out, &volume)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let [nx, ny, nz] = volume.size_xyz();
    tracing::info!(
        "wrote {} ({nx} x {ny} x {nz}, spacing {:?} mm)",
        args.out.display(),
        volume.geometry.spacing
    );
    Ok(ExitCode::SUCCESS)
}
