use crate::{Result, Volume, VolumeError};
use std::path::Path;
/// Writes a DICOM series (placeholder).
pub fn write_series(
    dir: &Path,
    volume: &Volume,
    reference: Option<&Path>,
    description: &str,
) -> Result<()> {
    let _ = (volume, reference, description);
    Err(VolumeError::unsupported(dir, "not yet"))
}
