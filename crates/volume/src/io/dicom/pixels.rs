//! Decoding one slice's pixel data to Hounsfield units.

use super::scan::SliceHeader;
use crate::{Result, VolumeError};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Checks that the slice's transfer syntax is one whose pixel data we can decode.
pub fn check_transfer_syntax(h: &SliceHeader) -> Result<()> {
    let uid = h.transfer_syntax.as_str();
    match TransferSyntaxRegistry.get(uid) {
        None => Err(VolumeError::unsupported(
            &h.path,
            format!("unknown transfer syntax {uid}"),
        )),
        Some(ts) if !ts.can_decode_all() => Err(VolumeError::unsupported(
            &h.path,
            format!(
                "transfer syntax {uid} ({}) cannot be decoded by this build",
                ts.name()
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The slice's pixels, row-major (`rows × columns`), as `stored * RescaleSlope +
/// RescaleIntercept` (computed in float64, then rounded to float32).
pub fn decode_slice(h: &SliceHeader) -> Result<Vec<f32>> {
    check_transfer_syntax(h)?;
    let obj = OpenFileOptions::new()
        .open_file(&h.path)
        .map_err(|e| VolumeError::format(&h.path, format!("cannot read DICOM file: {e}")))?;
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(VolumeError::format(&h.path, "no PixelData element"));
    }
    let decoded = obj
        .decode_pixel_data()
        .map_err(|e| VolumeError::format(&h.path, format!("cannot decode pixel data: {e}")))?;
    if decoded.samples_per_pixel() != 1 {
        return Err(VolumeError::unsupported(
            &h.path,
            format!(
                "{} samples per pixel ({:?}): only grayscale images are supported",
                decoded.samples_per_pixel(),
                decoded.photometric_interpretation()
            ),
        ));
    }
    if decoded.rows() as usize != h.rows || decoded.columns() as usize != h.columns {
        return Err(VolumeError::format(
            &h.path,
            "decoded pixel data size differs from Rows/Columns",
        ));
    }
    let stored: Vec<f64> = decoded
        .to_vec_with_options(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        .map_err(|e| VolumeError::format(&h.path, format!("cannot convert pixel data: {e}")))?;
    let expected = h.rows * h.columns;
    if stored.len() < expected {
        return Err(VolumeError::format(
            &h.path,
            format!(
                "pixel data holds {} values, Rows x Columns = {expected}",
                stored.len()
            ),
        ));
    }
    let (slope, intercept) = rescale(&obj);
    Ok(stored[..expected]
        .iter()
        .map(|&v| (v * slope + intercept) as f32)
        .collect())
}

/// RescaleSlope/RescaleIntercept, defaulting to 1 and 0 when absent or invalid.
fn rescale(obj: &dicom_object::DefaultDicomObject) -> (f64, f64) {
    let get = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_float64().ok())
            .filter(|v| v.is_finite())
    };
    let slope = get(tags::RESCALE_SLOPE)
        .filter(|s| *s != 0.0)
        .unwrap_or(1.0);
    (slope, get(tags::RESCALE_INTERCEPT).unwrap_or(0.0))
}
