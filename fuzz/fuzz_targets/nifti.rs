//! Fuzzes the NIfTI-1 reader (plain and gzip) from arbitrary bytes: it must return Ok or Err,
//! never panic, and never allocate more than the input can justify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = volume::io::nifti::read_nifti_bytes(Path::new("fuzz.nii"), data);
});
