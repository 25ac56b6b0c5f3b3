//! Decoding one slice's pixel data to Hounsfield units.
//!
//! JPEG 2000 goes through our own validator and a memory-safe decoder ([`super::j2k`], which
//! explains why); every other transfer syntax through dicom-pixeldata.

use super::j2k;
use super::scan::SliceHeader;
use crate::{Result, VolumeError};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// JPEG 2000 Image Compression (Lossless Only) and JPEG 2000 Image Compression: decoded by
/// [`j2k`], not by dicom-pixeldata (built without its JPEG 2000 feature).
const JPEG2000_SYNTAXES: [&str; 2] = ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"];

fn is_jpeg2000(uid: &str) -> bool {
    JPEG2000_SYNTAXES.contains(&uid)
}

/// Checks that the slice's transfer syntax is one whose pixel data we can decode.
pub fn check_transfer_syntax(h: &SliceHeader) -> Result<()> {
    let uid = h.transfer_syntax.as_str();
    // Deflated data sets are inflated by [`super::open`]: their pixel data is then native.
    if is_jpeg2000(uid) || uid == super::lengths::DEFLATED_EXPLICIT_VR_LE {
        return Ok(());
    }
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

/// The pixels of the frames `frames` of one enhanced multi-frame file (all from the same
/// `path`, each with its own rescale), row-major each, in HU as [`decode_slice`] gives them.
/// The file's pixel data is decoded once for all of them.
pub fn decode_frames(frames: &[&SliceHeader]) -> Result<Vec<Vec<f32>>> {
    let Some(first) = frames.first() else {
        return Ok(Vec::new());
    };
    check_transfer_syntax(first)?;
    if is_jpeg2000(&first.transfer_syntax) {
        return Err(VolumeError::unsupported(
            &first.path,
            "JPEG 2000 multi-frame pixel data is not supported (single-frame JPEG 2000 is)",
        ));
    }
    let obj = super::open::open(&first.path, None)
        .map_err(|e| VolumeError::format(&first.path, e))?
        .obj;
    let stored = decode_with_pixeldata(first, &obj)?;
    let plane = first.rows * first.columns;
    let (slope0, intercept0) = rescale(&obj);
    frames
        .iter()
        .map(|h| {
            let k = h.frame.unwrap_or(0);
            let values = stored.get(k * plane..(k + 1) * plane).ok_or_else(|| {
                VolumeError::format(
                    &h.path,
                    format!(
                        "pixel data holds {} values, too few for frame {} of {plane}",
                        stored.len(),
                        k + 1
                    ),
                )
            })?;
            let (slope, intercept) = h.rescale.unwrap_or((slope0, intercept0));
            Ok(values
                .iter()
                .map(|&v| (v * slope + intercept) as f32)
                .collect())
        })
        .collect()
}

/// The slice's pixels, row-major (`rows × columns`), as `stored * RescaleSlope +
/// RescaleIntercept` (computed in float64, then rounded to float32).
pub fn decode_slice(h: &SliceHeader) -> Result<Vec<f32>> {
    check_transfer_syntax(h)?;
    let obj = super::open::open(&h.path, None)
        .map_err(|e| VolumeError::format(&h.path, e))?
        .obj;
    let Some(pixel_data) = obj.element_opt(tags::PIXEL_DATA).ok().flatten() else {
        return Err(VolumeError::format(&h.path, "no PixelData element"));
    };
    let stored = if is_jpeg2000(&h.transfer_syntax) {
        decode_jpeg2000(h, &obj, pixel_data.value())?
    } else {
        decode_with_pixeldata(h, &obj)?
    };
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

fn only_grayscale(
    h: &SliceHeader,
    samples: usize,
    photometric: impl std::fmt::Debug,
) -> Result<()> {
    if samples != 1 {
        return Err(VolumeError::unsupported(
            &h.path,
            format!(
                "{samples} samples per pixel ({photometric:?}): only grayscale images are supported"
            ),
        ));
    }
    Ok(())
}

/// Runs a pixel decoder, turning a panic into `Err` with the panic's message.
///
/// A last line of defence for decoders we do not control: dicom-transfer-syntax-registry's RLE
/// decoder (0.8.2) indexes by segment offsets and decoded lengths taken from the file and
/// panics on a corrupt one (found by the DICOM fuzz target). This catches panics only, not
/// undefined behaviour, aborts or out-of-memory; the default panic hook still prints the panic
/// to stderr before the error is returned.
pub(crate) fn contain_panic<T>(decode: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).map_err(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        format!("the pixel data decoder panicked on this file ({why})")
    })
}

/// Stored values through dicom-pixeldata (native and RLE/JPEG syntaxes): every frame, one
/// after the other (a single-frame image's one).
fn decode_with_pixeldata(h: &SliceHeader, obj: &DefaultDicomObject) -> Result<Vec<f64>> {
    let decoded = contain_panic(|| obj.decode_pixel_data())
        .map_err(|m| VolumeError::format(&h.path, m))?
        .map_err(|e| VolumeError::format(&h.path, format!("cannot decode pixel data: {e}")))?;
    only_grayscale(
        h,
        decoded.samples_per_pixel() as usize,
        decoded.photometric_interpretation(),
    )?;
    if decoded.rows() as usize != h.rows || decoded.columns() as usize != h.columns {
        return Err(VolumeError::format(
            &h.path,
            "decoded pixel data size differs from Rows/Columns",
        ));
    }
    let options = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    contain_panic(|| decoded.to_vec_with_options(&options))
        .map_err(|m| VolumeError::format(&h.path, m))?
        .map_err(|e| VolumeError::format(&h.path, format!("cannot convert pixel data: {e}")))
}

/// Stored values of the first frame of JPEG 2000 pixel data, checked against the header.
fn decode_jpeg2000(
    h: &SliceHeader,
    obj: &DefaultDicomObject,
    pixel_data: &dicom_core::value::Value<dicom_object::InMemDicomObject, Vec<u8>>,
) -> Result<Vec<f64>> {
    let uint = |tag, name: &str| -> Result<usize> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .map(|v| v as usize)
            .ok_or_else(|| VolumeError::format(&h.path, format!("no valid {name}")))
    };
    let samples = uint(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel").unwrap_or(1);
    only_grayscale(h, samples, "JPEG 2000")?;
    let bits_allocated = uint(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let dicom = j2k::DicomImage {
        rows: h.rows,
        columns: h.columns,
        samples_per_pixel: samples,
        bits_allocated,
        bits_stored: uint(tags::BITS_STORED, "BitsStored").unwrap_or(bits_allocated),
        signed: uint(tags::PIXEL_REPRESENTATION, "PixelRepresentation").unwrap_or(0) == 1,
    };
    let Some(fragments) = pixel_data.fragments() else {
        return Err(VolumeError::format(
            &h.path,
            "JPEG 2000 transfer syntax but the PixelData is not encapsulated",
        ));
    };
    let frame = first_frame(fragments, pixel_data.offset_table(), h.number_of_frames)
        .map_err(|m| VolumeError::format(&h.path, m))?;
    j2k::decode_frame(&h.path, 0, &frame, &dicom)
}

/// The bytes of frame 0 of encapsulated pixel data (PS3.5 A.4): all fragments for a
/// single-frame image; for a multi-frame one, the fragments before the Basic Offset Table's
/// second entry, or the first fragment when there is one fragment per frame.
fn first_frame(
    fragments: &[Vec<u8>],
    offset_table: Option<&[u32]>,
    frames: usize,
) -> std::result::Result<Vec<u8>, String> {
    if fragments.is_empty() {
        return Err("encapsulated PixelData holds no fragment".into());
    }
    if frames <= 1 {
        return Ok(fragments.concat());
    }
    if let Some(&[_, next, ..]) = offset_table {
        // Offsets count from the first fragment's item tag; each item has an 8-byte header.
        let mut at = 0u64;
        let mut frame = Vec::new();
        for f in fragments {
            if at >= u64::from(next) {
                break;
            }
            frame.extend_from_slice(f);
            at += 8 + f.len() as u64;
        }
        return Ok(frame);
    }
    if fragments.len() == frames {
        return Ok(fragments[0].clone());
    }
    Err(format!(
        "{frames} frames in {} fragments without an offset table: cannot find frame 0",
        fragments.len()
    ))
}

/// RescaleSlope/RescaleIntercept, defaulting to 1 and 0 when absent or invalid.
fn rescale(obj: &DefaultDicomObject) -> (f64, f64) {
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
