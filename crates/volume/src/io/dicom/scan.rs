//! Reading the headers of every file in a folder and grouping DICOM images by series.

use crate::{Result, VolumeError};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, Tag};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What we need from one image file's header to place it in a volume.
#[derive(Debug, Clone)]
pub struct SliceHeader {
    pub path: PathBuf,
    pub series_uid: String,
    /// SOPInstanceUID and SOPClassUID (empty when missing): what a derived image references.
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub study_uid: String,
    pub modality: String,
    pub description: String,
    /// Values of ImageType (0008,0008), upper-case.
    pub image_type: Vec<String>,
    pub rows: usize,
    pub columns: usize,
    pub number_of_frames: usize,
    /// ImagePositionPatient (LPS mm).
    pub position: Option<[f64; 3]>,
    /// ImageOrientationPatient: row cosine then column cosine.
    pub orientation: Option<[f64; 6]>,
    /// PixelSpacing: (between rows, between columns) in mm.
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    /// SpacingBetweenSlices (0018,0088).
    pub spacing_between_slices: Option<f64>,
    pub instance_number: Option<i64>,
    pub transfer_syntax: String,
}

/// A folder's DICOM images grouped by SeriesInstanceUID, and what was skipped.
#[derive(Debug, Default)]
pub struct FolderScan {
    pub series: BTreeMap<String, Vec<SliceHeader>>,
    /// Files that are not DICOM images, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

fn text(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok()??;
    let s = e.to_str().ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

fn floats(obj: &DefaultDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let e = obj.element_opt(tag).ok()??;
    let v = e.to_multi_float64().ok()?;
    v.iter().all(|x| x.is_finite()).then_some(v)
}

fn array<const N: usize>(v: Option<Vec<f64>>) -> Option<[f64; N]> {
    v.and_then(|v| <[f64; N]>::try_from(v).ok())
}

fn uint(obj: &DefaultDicomObject, tag: Tag) -> Option<usize> {
    let e = obj.element_opt(tag).ok()??;
    e.to_int::<u32>().ok().map(|v| v as usize)
}

/// Opens a DICOM file without its pixel data. `Err` is the reason it is not usable as an image.
pub fn read_header(path: &Path) -> std::result::Result<SliceHeader, String> {
    let opened = super::open::open(path, Some(tags::PIXEL_DATA))?;
    let mut h = header_of(path, &opened.obj)?;
    if opened.inflated {
        // Report the file's own syntax; the pixels are native once inflated.
        h.transfer_syntax = super::lengths::DEFLATED_EXPLICIT_VR_LE.to_string();
    }
    Ok(h)
}

/// The image header fields of an opened object.
pub fn header_of(
    path: &Path,
    obj: &DefaultDicomObject,
) -> std::result::Result<SliceHeader, String> {
    let series_uid = text(obj, tags::SERIES_INSTANCE_UID).ok_or("no SeriesInstanceUID")?;
    let rows = uint(obj, tags::ROWS).ok_or("no Rows: not an image")?;
    let columns = uint(obj, tags::COLUMNS).ok_or("no Columns: not an image")?;
    Ok(SliceHeader {
        path: path.to_path_buf(),
        series_uid,
        sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        sop_class_uid: text(obj, tags::SOP_CLASS_UID).unwrap_or_default(),
        study_uid: text(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        modality: text(obj, tags::MODALITY).unwrap_or_default(),
        description: text(obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        image_type: text(obj, tags::IMAGE_TYPE)
            .map(|s| s.split('\\').map(|p| p.trim().to_uppercase()).collect())
            .unwrap_or_default(),
        rows,
        columns,
        number_of_frames: uint(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1),
        position: array(floats(obj, tags::IMAGE_POSITION_PATIENT)),
        orientation: array(floats(obj, tags::IMAGE_ORIENTATION_PATIENT)),
        pixel_spacing: array(floats(obj, tags::PIXEL_SPACING)),
        slice_thickness: floats(obj, tags::SLICE_THICKNESS).and_then(|v| v.first().copied()),
        spacing_between_slices: floats(obj, tags::SPACING_BETWEEN_SLICES)
            .and_then(|v| v.first().copied()),
        instance_number: text(obj, tags::INSTANCE_NUMBER).and_then(|s| s.parse().ok()),
        transfer_syntax: obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string(),
    })
}

/// Reads the header of every regular, non-hidden file directly in `dir` (sorted by name).
pub fn scan_folder(dir: &Path) -> Result<FolderScan> {
    let entries = std::fs::read_dir(dir).map_err(|e| VolumeError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| VolumeError::io(dir, e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(scan_files(dir, files))
}

/// Reads the header of each of `files` (a folder's, or one file given alone); `label` names
/// them in the log.
pub fn scan_files(label: &Path, files: Vec<PathBuf>) -> FolderScan {
    let dir = label;
    let mut scan = FolderScan::default();
    for path in files {
        match read_header(&path) {
            Ok(h) => scan.series.entry(h.series_uid.clone()).or_default().push(h),
            Err(why) => {
                tracing::debug!("{}: skipped: {why}", path.display());
                scan.skipped.push((path, why));
            }
        }
    }
    tracing::debug!(
        "{}: {} series, {} files skipped",
        dir.display(),
        scan.series.len(),
        scan.skipped.len()
    );
    scan
}
