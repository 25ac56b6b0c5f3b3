//! Fuzzes the DICOM series reader: the input becomes the single file of a folder, which is
//! then read as a series (header scan, assembly, pixel decoding). Ok or Err, never a panic
//! out of `read_series`.
//!
//! The reader contains panics of third-party pixel decoders (`pixels::contain_panic`: e.g.
//! dicom-rs's RLE decoder indexes by offsets read from the file) and reports them as errors,
//! which is its documented behaviour. libfuzzer-sys's panic hook aborts at the panic site, before
//! that containment can act, so `init` replaces it with one that only prints the panic: a panic
//! that escapes `read_series` still aborts the run (libfuzzer-sys aborts on any unwinding
//! out of the target), and so still counts as a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| eprintln!("contained? panic: {info}")));
    },
    |data: &[u8]| {
        let Ok(dir) = tempfile::tempdir() else { return };
        if std::fs::write(dir.path().join("slice.dcm"), data).is_ok() {
            let _ = volume::io::dicom::read_series(dir.path(), None);
        }
    }
);
