//! Fuzzes the DICOM series reader: the input becomes the single file of a folder, which is
//! then read as a series (header scan, assembly, pixel decoding). Ok or Err, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join("slice.dcm"), data).is_ok() {
        let _ = volume::io::dicom::read_series(dir.path(), None);
    }
});
