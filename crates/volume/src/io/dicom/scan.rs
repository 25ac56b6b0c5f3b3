//! Reading the headers of every file in a folder and grouping DICOM images by series.

use crate::{Result, VolumeError};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, Tag};
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
    /// ConvolutionKernel (0018,1210): the reconstruction kernel ("B30f", "STANDARD", ...).
    pub kernel: Option<String>,
    pub transfer_syntax: String,
    /// A frame of an enhanced multi-frame image: its index in the file (0-based). Position,
    /// orientation, spacing and rescale above are then that frame's, from the functional
    /// groups ([`read_frames`]).
    pub frame: Option<usize>,
    /// RescaleSlope and RescaleIntercept of this frame when they come from a functional group
    /// (enhanced images); `None`: the data set's own.
    pub rescale: Option<(f64, f64)>,
}

/// A folder's DICOM images grouped by SeriesInstanceUID, and what was skipped.
#[derive(Debug, Default)]
pub struct FolderScan {
    pub series: BTreeMap<String, Vec<SliceHeader>>,
    /// Files that are not DICOM images, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok()??;
    let s = e.to_str().ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let e = obj.element_opt(tag).ok()??;
    let v = e.to_multi_float64().ok()?;
    v.iter().all(|x| x.is_finite()).then_some(v)
}

fn array<const N: usize>(v: Option<Vec<f64>>) -> Option<[f64; N]> {
    v.and_then(|v| <[f64; N]>::try_from(v).ok())
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<usize> {
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
        kernel: text(obj, tags::CONVOLUTION_KERNEL),
        transfer_syntax: obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string(),
        frame: None,
        rescale: None,
    })
}

/// The items of sequence `tag` in `obj` (empty when absent).
fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .unwrap_or(&[])
}

/// Attribute `tag` of the first item of functional group `group` in `per_frame`, else in
/// `shared` (a per-frame group overrides the shared one, PS3.3 C.7.6.16).
fn functional(
    per_frame: Option<&InMemDicomObject>,
    shared: Option<&InMemDicomObject>,
    group: Tag,
    tag: Tag,
) -> Option<Vec<f64>> {
    [per_frame, shared]
        .into_iter()
        .flatten()
        .find_map(|g| items(g, group).first().and_then(|i| floats(i, tag)))
}

/// One header per frame of an enhanced multi-frame image (Enhanced CT, Legacy Converted
/// Enhanced CT, ...: anything with a Per-Frame Functional Groups Sequence), each placed by its
/// Plane Position, Plane Orientation, Pixel Measures and Pixel Value Transformation groups, as
/// dcm2niix and SimpleITK read them; a single-frame image or a multi-frame image without
/// functional groups: its one header, unchanged (the assembler refuses the latter).
pub fn read_frames(path: &Path) -> std::result::Result<Vec<SliceHeader>, String> {
    let opened = super::open::open(path, Some(tags::PIXEL_DATA))?;
    let mut base = header_of(path, &opened.obj)?;
    if opened.inflated {
        base.transfer_syntax = super::lengths::DEFLATED_EXPLICIT_VR_LE.to_string();
    }
    let obj: &InMemDicomObject = &opened.obj;
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if base.number_of_frames <= 1 || per_frame.is_empty() {
        return Ok(vec![base]);
    }
    if per_frame.len() != base.number_of_frames {
        return Err(format!(
            "NumberOfFrames is {} but the Per-Frame Functional Groups Sequence has {} items",
            base.number_of_frames,
            per_frame.len()
        ));
    }
    let shared = items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first();
    per_frame
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let get = |seq, tag| functional(Some(group), shared, seq, tag);
            let position = array(get(
                tags::PLANE_POSITION_SEQUENCE,
                tags::IMAGE_POSITION_PATIENT,
            ))
            .ok_or_else(|| format!("frame {}: no Plane Position (ImagePositionPatient)", i + 1))?;
            let orientation = array(get(
                tags::PLANE_ORIENTATION_SEQUENCE,
                tags::IMAGE_ORIENTATION_PATIENT,
            ))
            .ok_or_else(|| format!("frame {}: no Plane Orientation", i + 1))?;
            let measure = |tag| get(tags::PIXEL_MEASURES_SEQUENCE, tag);
            let transform = |tag| {
                get(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tag).and_then(|v| v.first().copied())
            };
            let rescale = match (
                transform(tags::RESCALE_SLOPE),
                transform(tags::RESCALE_INTERCEPT),
            ) {
                (None, None) => None,
                (slope, intercept) => Some((slope.unwrap_or(1.0), intercept.unwrap_or(0.0))),
            };
            Ok(SliceHeader {
                frame: Some(i),
                position: Some(position),
                orientation: Some(orientation),
                pixel_spacing: array(measure(tags::PIXEL_SPACING)).or(base.pixel_spacing),
                slice_thickness: measure(tags::SLICE_THICKNESS)
                    .and_then(|v| v.first().copied())
                    .or(base.slice_thickness),
                spacing_between_slices: measure(tags::SPACING_BETWEEN_SLICES)
                    .and_then(|v| v.first().copied())
                    .or(base.spacing_between_slices),
                rescale,
                ..base.clone()
            })
        })
        .collect()
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
        match read_frames(&path) {
            Ok(frames) => {
                for h in frames {
                    scan.series.entry(h.series_uid.clone()).or_default().push(h);
                }
            }
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
