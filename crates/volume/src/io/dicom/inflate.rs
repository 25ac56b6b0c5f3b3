//! Inflating a Deflated Explicit VR Little Endian data set (PS3.5 A.5), strictly and with a cap.
//!
//! The data set after the file meta group is one raw DEFLATE stream (RFC 1951: no zlib or gzip
//! framing). We inflate it ourselves, whole, before dicom-rs sees it (see [`super::open`] for
//! why dicom-rs cannot), so that the element-length guard ([`super::lengths`]) can walk the
//! bytes dicom-rs will parse. Unlike a `Read` adapter that stops quietly where a stream breaks,
//! this refuses a stream that is corrupt or ends before its final block, as pydicom does
//! (`zlib.decompress` raises): a half data set is a damaged file, not a shorter image.

use flate2::{Decompress, FlushDecompress, Status};

/// Largest inflated data set we accept: 1 GiB. One CT slice is ~0.5 MB and a 1,000-frame
/// 512 × 512 × 16-bit object 512 MiB, so a real file stays far below it; a deflate bomb (deflate
/// expands up to ~1032:1, so a 1 MB file can claim 1 GB) is refused once it passes the cap.
/// Memory grows only with bytes actually inflated, never from a declared size.
pub const MAX_INFLATED: usize = 1 << 30;

/// First output buffer size; it then doubles, up to the cap.
const FIRST_CHUNK: usize = 64 * 1024;

/// Inflates `compressed` (a raw DEFLATE stream) into at most `cap` bytes.
///
/// `Err` says what is wrong: corrupt (with how far inflating got), truncated (the input ends
/// before the stream's final block) or larger than `cap`. Bytes after the end of the stream
/// are ignored (some writers pad the file to an even length).
pub fn inflate_capped(compressed: &[u8], cap: usize) -> Result<Vec<u8>, String> {
    let mut z = Decompress::new(false);
    let mut out: Vec<u8> = Vec::new();
    loop {
        if out.len() == out.capacity() {
            if out.len() > cap {
                return Err(format!(
                    "deflated data set inflates to more than {cap} bytes (the limit)"
                ));
            }
            // Double, but never past cap + 1 (one byte over the cap is how we see it).
            let target = (out.len() * 2).max(FIRST_CHUNK).min(cap + 1);
            out.reserve_exact(target.saturating_sub(out.len()).max(1));
        }
        let (in_before, out_before) = (z.total_in(), out.len());
        let rest = compressed.get(in_before as usize..).unwrap_or(&[]);
        let status = z
            .decompress_vec(rest, &mut out, FlushDecompress::None)
            .map_err(|e| {
                format!(
                    "deflated data set is corrupt: {e} (after {} compressed bytes, {} inflated)",
                    in_before,
                    out.len()
                )
            })?;
        if out.len() > cap {
            return Err(format!(
                "deflated data set inflates to more than {cap} bytes (the limit)"
            ));
        }
        match status {
            Status::StreamEnd => {
                let trailing = compressed.len() as u64 - z.total_in();
                tracing::trace!(
                    "inflated {} bytes into {}; {trailing} bytes after the stream ignored",
                    z.total_in(),
                    out.len()
                );
                return Ok(out);
            }
            Status::Ok | Status::BufError => {
                let stuck = z.total_in() == in_before && out.len() == out_before;
                if stuck && out.len() < out.capacity() {
                    // Room to write and nothing consumed: the input ended mid-stream.
                    return Err(format!(
                        "deflated data set is truncated: the stream ends without its final \
                         block after {} compressed bytes ({} inflated)",
                        z.total_in(),
                        out.len()
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(b: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b).unwrap();
        z.finish().unwrap()
    }

    /// Bytes that compress poorly, so buffers grow several times.
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn round_trips_exactly_and_ignores_trailing_padding() {
        for data in [
            Vec::new(),
            b"DICM".to_vec(),
            noise(300_000),
            vec![7u8; 1 << 20],
        ] {
            let mut z = deflate(&data);
            assert_eq!(inflate_capped(&z, MAX_INFLATED).unwrap(), data);
            z.push(0);
            assert_eq!(inflate_capped(&z, MAX_INFLATED).unwrap(), data);
        }
    }

    #[test]
    fn truncated_stream_is_refused() {
        let z = deflate(&noise(100_000));
        for cut in [1, z.len() / 2, z.len() - 1] {
            let err = inflate_capped(&z[..cut], MAX_INFLATED).unwrap_err();
            assert!(err.contains("truncated"), "cut {cut}: {err}");
        }
        assert!(inflate_capped(&[], MAX_INFLATED)
            .unwrap_err()
            .contains("truncated"));
    }

    #[test]
    fn corrupt_stream_is_refused_with_where() {
        // Block type 3 (reserved) in the first header: corrupt at byte 0.
        let err = inflate_capped(&[0x07, 0, 0, 0], MAX_INFLATED).unwrap_err();
        assert!(err.contains("corrupt") && err.contains("after 0"), "{err}");
        // A stored block whose LEN and NLEN disagree (what the fuzz regression holds).
        let err = inflate_capped(&[0x01, 0x10, 0x00, 0x00, 0x00], MAX_INFLATED).unwrap_err();
        assert!(err.contains("corrupt"), "{err}");
    }

    #[test]
    fn output_past_the_cap_is_refused_without_growing_past_it() {
        let data = vec![0u8; 10 * FIRST_CHUNK];
        let z = deflate(&data);
        assert_eq!(inflate_capped(&z, data.len()).unwrap(), data);
        let err = inflate_capped(&z, data.len() - 1).unwrap_err();
        assert!(err.contains("more than"), "{err}");
        assert!(inflate_capped(&z, 100)
            .unwrap_err()
            .contains("more than 100"));
    }
}
