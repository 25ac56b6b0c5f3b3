//! NIfTI-1 writers: float32 images, uint8 masks and ITK displacement fields.
//!
//! Output follows what ITK/SimpleITK writes, so other tools read our files exactly as they read
//! ITK's: single-file `n+1`, little-endian, voxel data at byte 352, qform and sform both set with
//! code SCANNER_ANAT from the same LPS geometry, `pixdim[0]` = qfac, `xyzt_units` = mm + s,
//! `scl_slope` = 1. A `.gz` name gets gzip compression with a zero timestamp and no file name in
//! the gzip header, so the same volume always gives the same bytes.

use super::header::{DataType, NiftiHeader, DEFAULT_VOX_OFFSET, INTENT_DISPVECT, UNITS_MM_SEC};
use super::orient::xform_fields;
use crate::{Geometry, Mask, Result, Volume, VolumeError};
use flate2::{Compression, GzBuilder};
use ndarray::Array3;
use std::io::Write;
use std::path::Path;
use util::atomic::write_atomic;

/// Voxels per chunk when converting to little-endian bytes.
const CHUNK: usize = 1 << 16;

/// Writes a float volume as NIfTI-1 float32, atomically. `.nii.gz` names are gzip-compressed.
pub fn write_nifti(path: &Path, volume: &Volume) -> Result<()> {
    write_nifti_described(path, volume, "ncct2ctpa")
}

/// [`write_nifti`] with `descrip` (the header's free-text description, at most 79 bytes;
/// longer is cut at a character boundary): what the image is and where it comes from.
pub fn write_nifti_described(path: &Path, volume: &Volume, descrip: &str) -> Result<()> {
    let mut header = header_for(
        path,
        &volume.geometry,
        volume.size_xyz(),
        None,
        DataType::F32,
    )?;
    let mut end = descrip.len().min(79);
    while !descrip.is_char_boundary(end) {
        end -= 1;
    }
    header.descrip = descrip[..end].to_owned();
    write_file(path, &header, |w| {
        write_le(w, volume.data.iter(), |v: &f32| v.to_le_bytes())
    })
}

/// Writes a mask as NIfTI-1 uint8, atomically.
pub fn write_nifti_mask(path: &Path, mask: &Mask) -> Result<()> {
    let header = header_for(path, &mask.geometry, mask.size_xyz(), None, DataType::U8)?;
    write_file(path, &header, |w| {
        write_le(w, mask.data.iter(), |v: &u8| [*v])
    })
}

/// Writes a displacement field that ITK reads as a vector image of physical LPS displacements.
///
/// `field` holds the displacement in millimetres along the LPS axes, one `[z, y, x]` array per
/// component: `[dx, dy, dz]` (x = towards patient Left, y = Posterior, z = Superior), all on the
/// grid `geometry`. A point `p` of that grid maps to `p + (dx, dy, dz)`.
///
/// The file is a 5D NIfTI with `dim = [5, nx, ny, nz, 1, 3]`, float32, intent
/// `NIFTI_INTENT_DISPVECT` (1006). For that intent ITK 5.4 takes the stored vectors to be RAS
/// and negates the first two components on reading (checked with SimpleITK 2.5: a stored
/// (1, 2, 3) reads back as (-1, -2, 3); with the generic VECTOR intent 1007 it would not be
/// negated). So we store `(-dx, -dy, dz)`, and ITK/SimpleITK, ANTs and nibabel-based tools that
/// follow the NIfTI standard all see the same physical field.
pub fn write_nifti_displacement(
    path: &Path,
    geometry: &Geometry,
    field: &[Array3<f32>; 3],
) -> Result<()> {
    let dim = field[0].dim();
    if field.iter().any(|f| f.dim() != dim) {
        return Err(VolumeError::invalid(format!(
            "{}: displacement components have different shapes: {:?}",
            path.display(),
            field.iter().map(|f| f.dim()).collect::<Vec<_>>()
        )));
    }
    let (nz, ny, nx) = dim;
    let header = header_for(
        path,
        geometry,
        [nx, ny, nz],
        Some(INTENT_DISPVECT),
        DataType::F32,
    )?;
    write_file(path, &header, |w| {
        // Component is the slowest axis: all of -dx, then all of -dy, then dz (RAS).
        write_le(w, field[0].iter(), |v: &f32| (-v).to_le_bytes())?;
        write_le(w, field[1].iter(), |v: &f32| (-v).to_le_bytes())?;
        write_le(w, field[2].iter(), |v: &f32| v.to_le_bytes())
    })
}

/// The header ITK would write for this geometry and size (`intent` set: a 3-vector field).
fn header_for(
    path: &Path,
    geometry: &Geometry,
    size_xyz: [usize; 3],
    intent: Option<i16>,
    datatype: DataType,
) -> Result<NiftiHeader> {
    if !crate::io::is_nifti_path(path) {
        return Err(VolumeError::invalid(format!(
            "{}: a NIfTI output name must end in .nii or .nii.gz",
            path.display()
        )));
    }
    geometry
        .validate()
        .map_err(|e| VolumeError::invalid(format!("{}: {e}", path.display())))?;
    if let Some(&too_big) = size_xyz.iter().find(|&&n| n == 0 || n > i16::MAX as usize) {
        return Err(VolumeError::invalid(format!(
            "{}: dimension {too_big} cannot be stored in NIfTI-1 (1..=32767)",
            path.display()
        )));
    }
    let x = xform_fields(geometry);
    let mut dims = size_xyz.to_vec();
    let mut pixdim = [
        x.pixdim[0],
        x.pixdim[1],
        x.pixdim[2],
        x.pixdim[3],
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    if intent.is_some() {
        dims.extend([1, 3]);
        pixdim[4] = 1.0;
        pixdim[5] = 1.0;
    }
    Ok(NiftiHeader {
        big_endian: false,
        dims,
        datatype,
        pixdim,
        vox_offset: DEFAULT_VOX_OFFSET,
        scl_slope: 1.0,
        scl_inter: 0.0,
        intent_code: intent.unwrap_or(0),
        xyzt_units: UNITS_MM_SEC,
        descrip: "ncct2ctpa".into(),
        qform_code: super::header::XFORM_SCANNER_ANAT,
        sform_code: super::header::XFORM_SCANNER_ANAT,
        quatern: x.quatern,
        qoffset: x.qoffset,
        srow: x.srow,
    })
}

/// Header + voxels, gzip-compressed for `.gz` names, written atomically.
fn write_file<F>(path: &Path, header: &NiftiHeader, voxels: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let gz = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".gz"));
    tracing::debug!(
        "writing {} ({}, dims {:?}, gzip {gz})",
        path.display(),
        header.datatype.name(),
        header.dims
    );
    write_atomic(path, |w| {
        if gz {
            // GzBuilder writes mtime 0 and no name: deterministic bytes. Level 1: CT floats
            // compress little better at higher levels and writing stays fast.
            let mut enc = GzBuilder::new().write(w, Compression::fast());
            enc.write_all(&header.encode())?;
            voxels(&mut enc)?;
            enc.finish()?;
            Ok(())
        } else {
            w.write_all(&header.encode())?;
            voxels(w)
        }
    })?;
    Ok(())
}

/// Writes values in iteration (logical `[z, y, x]`, x fastest) order as little-endian bytes.
fn write_le<'a, T: 'a, const N: usize>(
    w: &mut dyn Write,
    values: impl Iterator<Item = &'a T>,
    to_bytes: impl Fn(&T) -> [u8; N],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK * N);
    for v in values {
        buf.extend_from_slice(&to_bytes(v));
        if buf.len() >= CHUNK * N {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)
}
