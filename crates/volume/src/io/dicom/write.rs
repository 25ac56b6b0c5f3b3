//! Writing a volume as an uncompressed CT series, so results can go back to a PACS viewer.
//!
//! One file per axial slice (index k), explicit VR little endian, CT Image Storage, int16
//! pixels with RescaleSlope/RescaleIntercept chosen so the volume's value range fits. New
//! SeriesInstanceUID and SOPInstanceUIDs under the `2.25.` root (a random 128-bit UUID as a
//! decimal, ITU-T X.667), so they are unique without an organisation root. With a reference
//! series, patient and study fields (and the frame of reference) are carried over, so the
//! result files into the same study (unless [`SeriesInfo::new_study`]). The folder is written
//! atomically.
//!
//! Provenance ([`SeriesInfo`]): ImageType `DERIVED\SECONDARY\AXIAL`, the SeriesDescription
//! and DerivationDescription given, and, with a reference series, each slice's
//! SourceImageSequence naming the reference image at its position (the nearest) and a
//! ReferencedSeriesSequence naming the reference series, as PS3.3's General Image and Common
//! Instance Reference modules describe a derived image.

use super::scan;
use crate::{Result, Volume, VolumeError};
use dicom_core::value::DataSetSequence;
use dicom_core::{dicom_value, DataElement, Length, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, Tag};
use std::path::Path;
use util::atomic::write_dir_atomic;

/// Patient/study attributes copied from a reference series when present.
const CARRIED: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::FRAME_OF_REFERENCE_UID,
];

/// A new UID `2.25.<random 128-bit integer>`.
fn new_uid() -> String {
    format!("2.25.{}", rand::random::<u128>())
}

/// A decimal string that fits DICOM's 16-character DS limit.
fn ds(v: f64) -> String {
    for prec in (0..=10).rev() {
        let s = format!("{v:.prec$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{v:.6e}")
}

fn ds_multi(v: &[f64]) -> String {
    v.iter().map(|&x| ds(x)).collect::<Vec<_>>().join("\\")
}

/// `(slope, intercept)` so that `(v - intercept) / slope` fits int16 for `v` in `[lo, hi]`:
/// slope 1 (integers stay exact) unless the range is wider than 65535.
fn rescale_for(lo: f64, hi: f64) -> (f64, f64) {
    let slope = if hi - lo > 65535.0 {
        (hi - lo) / 65535.0
    } else {
        1.0
    };
    let intercept = if slope == 1.0 && lo >= -32768.0 && hi <= 32767.0 {
        0.0
    } else {
        (lo + 32768.0 * slope).floor()
    };
    (slope, intercept)
}

/// What a written series says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesInfo {
    /// SeriesDescription (LO: at most 64 characters; longer is cut).
    pub description: String,
    /// DerivationDescription (ST): how the images were made.
    pub derivation: Option<String>,
    /// A new StudyInstanceUID even when the reference series has one (by default the series
    /// files into the reference's study).
    pub new_study: bool,
}

impl SeriesInfo {
    /// A series described only by `description`.
    pub fn described(description: &str) -> Self {
        Self {
            description: description.to_owned(),
            ..Self::default()
        }
    }
}

/// The reference series (the one `read_series` reads from `dir` by default): its first image's header object, and every
/// image's header (for the source references).
struct Reference {
    object: InMemDicomObject,
    series_uid: String,
    images: Vec<scan::SliceHeader>,
}

fn reference(dir: &Path) -> Result<Reference> {
    let list = super::list_series(dir)?;
    // the series `read_series` reads from this folder by default
    let facts: Vec<_> = list.iter().map(|s| s.facts.clone()).collect();
    let chosen = super::select::choose(dir, &facts, &super::SeriesRule::default());
    let uid = match &chosen {
        Ok(c) => &c.uid,
        Err(_) => &list[0].uid,
    };
    let mut scan = scan::scan_folder(dir)?;
    let images = scan.series.remove(uid).unwrap_or_default();
    let first = images
        .first()
        .ok_or_else(|| VolumeError::format(dir, "reference series has no image"))?;
    let opened = super::open::open(&first.path, Some(tags::PIXEL_DATA))
        .map_err(|e| VolumeError::format(&first.path, e))?;
    Ok(Reference {
        object: opened.obj.into_inner(),
        series_uid: uid.clone(),
        images,
    })
}

impl Reference {
    /// The reference image nearest to `point` (by ImagePositionPatient; `None` when no image
    /// has a position or a SOP instance UID).
    fn nearest(&self, point: [f64; 3]) -> Option<&scan::SliceHeader> {
        let d2 = |p: [f64; 3]| (0..3).map(|i| (p[i] - point[i]).powi(2)).sum::<f64>();
        self.images
            .iter()
            .filter(|h| !h.sop_instance_uid.is_empty())
            .filter_map(|h| h.position.map(|p| (d2(p), h)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, h)| h)
    }
}

/// An SQ element of `items`.
fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

/// A Referenced SOP item: class and instance of `image`.
fn sop_reference(image: &scan::SliceHeader) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    item.put_str(
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        image.sop_class_uid.clone(),
    );
    item.put_str(
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        image.sop_instance_uid.clone(),
    );
    item
}

/// SourceImageSequence and ReferencedSeriesSequence of the slice at `point`.
fn put_source(obj: &mut InMemDicomObject, reference: &Reference, point: [f64; 3]) {
    let Some(image) = reference.nearest(point) else {
        return;
    };
    obj.put(sequence(
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![sop_reference(image)],
    ));
    let mut series = InMemDicomObject::new_empty();
    series.put_str(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        reference.series_uid.clone(),
    );
    series.put(sequence(
        tags::REFERENCED_INSTANCE_SEQUENCE,
        vec![sop_reference(image)],
    ));
    obj.put(sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![series]));
}

/// At most `n` characters of `s` (DICOM lengths count bytes; the texts here are ASCII).
fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Writes `volume` as a CT series into the new folder `dir` (which must not exist, or be empty).
///
/// `reference`: a folder holding the series this volume derives from; its patient and study
/// fields are carried over, and each slice references its source image ([`SeriesInfo`] says
/// what the series is). Slices are written along
/// the volume's k axis with ImagePositionPatient = the physical point of voxel (0, 0, k); a
/// reader sorting along row × column cosine (ours, SimpleITK) gets the same geometry back when
/// the direction is right-handed, and the same volume flipped along k (same physical image)
/// when it is not.
pub fn write_series(
    dir: &Path,
    volume: &Volume,
    reference: Option<&Path>,
    info: &SeriesInfo,
) -> Result<()> {
    let source = reference.map(self::reference).transpose()?;
    let (lo, hi) = volume
        .value_range()
        .ok_or_else(|| VolumeError::invalid(format!("{}: volume is all NaN", dir.display())))?;
    let (slope, intercept) = rescale_for(lo as f64, hi as f64);
    let g = &volume.geometry;
    let [nx, ny, nz] = volume.size_xyz();
    if nx > u16::MAX as usize || ny > u16::MAX as usize {
        return Err(VolumeError::invalid(format!(
            "{}: slices of {nx}x{ny} are too large for DICOM",
            dir.display()
        )));
    }
    let series_uid = new_uid();
    let study_uid = new_uid();
    let frame_uid = new_uid();
    let iop = [
        g.direction[0][0],
        g.direction[1][0],
        g.direction[2][0],
        g.direction[0][1],
        g.direction[1][1],
        g.direction[2][1],
    ];
    tracing::debug!(
        "writing {nz} slices to {} (series {series_uid}, slope {slope}, intercept {intercept})",
        dir.display()
    );

    write_dir_atomic(dir, |tmp| {
        for k in 0..nz {
            let mut obj = InMemDicomObject::new_empty();
            if let Some(r) = &source {
                for &tag in CARRIED {
                    if let Ok(e) = r.object.element(tag) {
                        obj.put(e.clone());
                    }
                }
            }
            if info.new_study {
                obj.put_str(tags::STUDY_INSTANCE_UID, VR::UI, study_uid.clone());
            }
            if obj
                .element_opt(tags::STUDY_INSTANCE_UID)
                .ok()
                .flatten()
                .is_none()
            {
                obj.put_str(tags::STUDY_INSTANCE_UID, VR::UI, study_uid.clone());
                obj.put_str(tags::PATIENT_NAME, VR::PN, "ANONYMOUS");
                obj.put_str(tags::PATIENT_ID, VR::LO, "ncct2ctpa");
            }
            if obj
                .element_opt(tags::FRAME_OF_REFERENCE_UID)
                .ok()
                .flatten()
                .is_none()
            {
                obj.put_str(tags::FRAME_OF_REFERENCE_UID, VR::UI, frame_uid.clone());
            }
            let sop_uid = format!("{series_uid}.{}", k + 1);
            obj.put_str(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE);
            obj.put_str(tags::SOP_INSTANCE_UID, VR::UI, sop_uid.clone());
            obj.put_str(tags::MODALITY, VR::CS, "CT");
            obj.put_str(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY\\AXIAL");
            obj.put_str(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.clone());
            obj.put_str(tags::SERIES_NUMBER, VR::IS, "9001");
            obj.put_str(tags::SERIES_DESCRIPTION, VR::LO, cut(&info.description, 64));
            if let Some(d) = &info.derivation {
                obj.put_str(tags::DERIVATION_DESCRIPTION, VR::ST, cut(d, 1024));
            }
            obj.put_str(tags::INSTANCE_NUMBER, VR::IS, (k + 1).to_string());
            let pos = g.index_to_point([0.0, 0.0, k as f64]);
            if let Some(r) = &source {
                put_source(&mut obj, r, pos);
            }
            obj.put_str(tags::IMAGE_POSITION_PATIENT, VR::DS, ds_multi(&pos));
            obj.put_str(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds_multi(&iop));
            obj.put_str(
                tags::PIXEL_SPACING,
                VR::DS,
                ds_multi(&[g.spacing[1], g.spacing[0]]),
            );
            obj.put_str(tags::SLICE_THICKNESS, VR::DS, ds(g.spacing[2]));
            obj.put_str(tags::SPACING_BETWEEN_SLICES, VR::DS, ds(g.spacing[2]));
            obj.put(DataElement::new(
                tags::SAMPLES_PER_PIXEL,
                VR::US,
                dicom_value!(U16, [1]),
            ));
            obj.put_str(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
            obj.put(DataElement::new(
                tags::ROWS,
                VR::US,
                dicom_value!(U16, [ny as u16]),
            ));
            obj.put(DataElement::new(
                tags::COLUMNS,
                VR::US,
                dicom_value!(U16, [nx as u16]),
            ));
            for tag in [tags::BITS_ALLOCATED, tags::BITS_STORED] {
                obj.put(DataElement::new(tag, VR::US, dicom_value!(U16, [16])));
            }
            obj.put(DataElement::new(
                tags::HIGH_BIT,
                VR::US,
                dicom_value!(U16, [15]),
            ));
            obj.put(DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                dicom_value!(U16, [1]),
            ));
            obj.put_str(tags::RESCALE_INTERCEPT, VR::DS, ds(intercept));
            obj.put_str(tags::RESCALE_SLOPE, VR::DS, ds(slope));
            obj.put_str(tags::RESCALE_TYPE, VR::LO, "HU");
            let plane = volume.data.index_axis(ndarray::Axis(0), k);
            let mut bytes = Vec::with_capacity(nx * ny * 2);
            for &v in plane.iter() {
                let stored = (((v as f64) - intercept) / slope)
                    .round()
                    .clamp(-32768.0, 32767.0) as i16;
                bytes.extend_from_slice(&stored.to_le_bytes());
            }
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U8(bytes.into()),
            ));

            let name = format!("IM{:05}.dcm", k + 1);
            let path = tmp.join(&name);
            let file = obj
                .with_meta(
                    FileMetaTableBuilder::new()
                        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                        .implementation_class_uid("2.25.1131049412290744393547390931440381839")
                        .implementation_version_name("NCCT2CTPA"),
                )
                .map_err(|e| VolumeError::invalid(format!("{}: {e}", dir.join(&name).display())))?;
            let out = std::fs::File::create(&path).map_err(|e| VolumeError::io(&path, e))?;
            let mut out = std::io::BufWriter::new(out);
            file.write_all(&mut out)
                .map_err(|e| VolumeError::format(dir.join(&name), format!("cannot write: {e}")))?;
            use std::io::Write;
            out.flush().map_err(|e| VolumeError::io(&path, e))?;
            out.get_ref()
                .sync_all()
                .map_err(|e| VolumeError::io(&path, e))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ds_fits_sixteen_chars() {
        assert_eq!(ds(2.5), "2.5");
        assert_eq!(ds(-0.0), "0");
        assert!(ds(-123456.123456789).len() <= 16);
        assert!((ds(-123456.123456789).parse::<f64>().unwrap() + 123456.123456789).abs() < 1e-4);
    }

    #[test]
    fn rescale_keeps_integers_exact_and_fits_wide_ranges() {
        assert_eq!(rescale_for(-1024.0, 3071.0), (1.0, 0.0));
        let (s, i) = rescale_for(-1000.0, 60000.0);
        assert_eq!(s, 1.0);
        assert!((60000.0 - i) <= 32767.0 && (-1000.0 - i) >= -32768.0);
        let (s, i) = rescale_for(-1e5, 1e5);
        assert!(s > 1.0);
        assert!(((1e5 - i) / s).round() <= 32767.0 && ((-1e5 - i) / s).round() >= -32768.0);
    }
}
