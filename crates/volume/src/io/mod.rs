//! Reading and writing volumes: NIfTI-1 files and DICOM series.
//!
//! [`read_volume`] is the single entry point the rest of the toolkit uses: it accepts a
//! `.nii`/`.nii.gz` file or a folder holding a DICOM series.

pub mod dicom;
pub mod nifti;

use crate::{Mask, Result, Volume, VolumeError};
use ndarray::Array3;
use std::path::Path;

/// The HU of air: CT values below it are scanner padding outside the reconstruction circle
/// (PixelPaddingValue, typically -2048 or -3024), not tissue.
pub const AIR_HU: f32 = -1024.0;

/// Reads a CT volume in HU for the pipeline (prepare, predict, evaluate): [`read_volume`], or
/// `series` of a DICOM folder, with scanner padding read as air ([`pad_to_air`]).
pub fn read_ct(path: &Path, series: Option<&str>) -> Result<Volume> {
    let selection = match series {
        Some(uid) => dicom::SeriesSelection::Uid(uid.to_owned()),
        None => dicom::SeriesSelection::Rule(dicom::SeriesRule::default()),
    };
    Ok(read_ct_selected(path, &selection)?.0)
}

/// [`read_ct`] with the DICOM series chosen by `selection`; also returns how it was chosen
/// (`None` for NIfTI, a single file, or a series named by UID).
pub fn read_ct_selected(
    path: &Path,
    selection: &dicom::SeriesSelection,
) -> Result<(Volume, Option<dicom::SeriesChoice>)> {
    let dicom_series = |p: &Path| -> Result<(Volume, Option<dicom::SeriesChoice>)> {
        let s = dicom::read_series_selected(p, selection)?;
        Ok((s.volume, s.choice))
    };
    let (mut v, choice) = match path.is_dir() {
        true => dicom_series(path)?,
        false => match sniff(path)? {
            FileFormat::Nifti => (nifti::read_nifti(path)?, None),
            FileFormat::Dicom => dicom_series(path)?,
        },
    };
    let padded = pad_to_air(&mut v.data);
    if padded > 0 {
        tracing::info!(
            "{}: {padded} voxels below {AIR_HU} HU (scanner padding outside the reconstructed \
             circle) read as air ({AIR_HU} HU)",
            path.display()
        );
    }
    Ok((v, choice))
}

/// Sets every value below [`AIR_HU`] to it; returns how many there were.
pub fn pad_to_air(data: &mut Array3<f32>) -> usize {
    let mut n = 0;
    data.mapv_inplace(|v| {
        if v < AIR_HU {
            n += 1;
            AIR_HU
        } else {
            v
        }
    });
    n
}

/// Errors naming `path` when a voxel is NaN or infinite (how many, and the first as
/// `[z, y, x]`): such a voxel would turn every loss, mask and metric it touches into NaN, and
/// there is no honest value to put in its place.
pub fn check_finite_voxels(path: &Path, data: &Array3<f32>) -> Result<()> {
    let count = data.iter().filter(|v| !v.is_finite()).count();
    if count == 0 {
        return Ok(());
    }
    let first = data
        .indexed_iter()
        .find(|(_, v)| !v.is_finite())
        .map(|((z, y, x), v)| format!("[z, y, x] = [{z}, {y}, {x}] is {v}"))
        .unwrap_or_default();
    Err(VolumeError::format(
        path,
        format!("{count} voxel(s) are NaN or infinite (the first, {first}); refusing the volume"),
    ))
}

/// What a file holds, told by its first bytes (never by its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// A NIfTI-1 header (`sizeof_hdr` 348 in either byte order), or a gzip stream (a
    /// `.nii.gz`; its header is checked when it is read).
    Nifti,
    /// A DICOM file: `DICM` after the 128-byte preamble, or a bare data set that starts with
    /// an implicit-VR element of group 0x0002 or 0x0008 (what old scanners write).
    Dicom,
}

/// The format of file `path` from its content; errors name the file and both formats tried.
pub fn sniff(path: &Path) -> Result<FileFormat> {
    use std::io::Read;
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(path)
        .and_then(|f| f.take(132).read_to_end(&mut head))
        .map_err(|e| VolumeError::io(path, e))?;
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Ok(FileFormat::Dicom);
    }
    if head.len() >= 2 && head[..2] == [0x1f, 0x8b] {
        return Ok(FileFormat::Nifti);
    }
    if head.len() >= 4 && (le32(&head) == 348 || le32(&head).swap_bytes() == 348) {
        return Ok(FileFormat::Nifti);
    }
    // implicit VR little endian: group (0x0002 or 0x0008), element, 32-bit length
    if head.len() >= 8 && matches!(head[..2], [0x02, 0x00] | [0x08, 0x00]) && head[3] == 0x00 {
        let length = le32(&head[4..8]);
        if length < 1 << 16 {
            return Ok(FileFormat::Dicom);
        }
    }
    Err(VolumeError::format(
        path,
        "neither a NIfTI-1 file (no 348-byte header, not gzip) nor a DICOM file (no DICM \
         preamble, no implicit-VR data set)",
    ))
}

/// Reads a CT volume in HU from a NIfTI file, a DICOM file, or a DICOM series folder (the
/// largest CT series when the folder holds several; see [`dicom::read_series`] to choose
/// one). A file's format is told by its content ([`sniff`]), whatever its name.
pub fn read_volume(path: &Path) -> Result<Volume> {
    if path.is_dir() {
        return dicom::read_series(path, None).map(|s| s.volume);
    }
    match sniff(path)? {
        FileFormat::Nifti => nifti::read_nifti(path),
        FileFormat::Dicom => dicom::read_series(path, None).map(|s| s.volume),
    }
}

/// Reads a mask (any non-zero voxel is 1) from a NIfTI file.
pub fn read_mask(path: &Path) -> Result<Mask> {
    let v = nifti::read_nifti(path)?;
    Ok(Volume {
        data: v.data.mapv(|x| u8::from(x != 0.0)),
        geometry: v.geometry,
    })
}

/// Whether a file name looks like NIfTI (`.nii` or `.nii.gz`).
pub fn is_nifti_path(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// File name without `.nii`/`.nii.gz` (the case name of a raw dataset file).
pub fn nifti_stem(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
}
