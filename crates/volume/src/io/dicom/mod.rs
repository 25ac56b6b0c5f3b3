//! DICOM series reading and writing (placeholder signatures; implemented by the IO work).

use crate::{Result, Volume, VolumeError};
use std::path::Path;

/// One series read from a folder.
#[derive(Debug, Clone)]
pub struct DicomSeries {
    pub series_uid: String,
    pub volume: Volume,
}

/// Reads one DICOM series from `dir`: the one with `series_uid`, or the largest CT series.
pub fn read_series(dir: &Path, series_uid: Option<&str>) -> Result<DicomSeries> {
    let _ = series_uid;
    Err(VolumeError::unsupported(
        dir,
        "DICOM reading is not implemented yet",
    ))
}
