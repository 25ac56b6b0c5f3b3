//! A pre-check that no data element of a DICOM file declares more bytes than the file holds.
//!
//! dicom-rs (0.8) allocates an element's value buffer from its declared 32-bit length before
//! reading it, so a few corrupt bytes in a small file (the DICOM fuzz target found one: a 35 kB
//! file with an element claiming 2.3 GB) make it ask for gigabytes: an out-of-memory abort on a
//! small machine instead of an error. This walker reads only element headers (tag, VR, length),
//! seeking over values, and refuses a file in which a defined length runs past the end of the
//! file. It descends into sequences and items, whose nested lengths dicom-rs also trusts, and
//! treats encapsulated pixel data items as opaque fragments (PS3.5 §7.1-7.5, A.4).
//!
//! It checks lengths only; everything else (VRs, values, nesting) is left to dicom-rs, which
//! reports those problems itself. The walk must see the bytes dicom-rs will parse: a Deflated
//! Explicit VR Little Endian data set is inflated here ([`super::inflate`], strict and capped),
//! walked, and handed back ([`Checked::Deflated`]) for [`super::open`] to parse, since dicom-rs
//! does not inflate it. Nothing after an undefined-length UN element is walked (its contents
//! switch to implicit VR).

use super::inflate;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const SEQUENCE_DELIMITER: (u16, u16) = (0xFFFE, 0xE0DD);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// VRs whose explicit-VR header has a 16-bit length, as dicom-rs 0.8 reads them: every other
/// VR, unknown ones included (read as UN), has 2 reserved bytes and a 32-bit length. We must
/// read headers exactly as dicom-rs does, since its reading decides what it allocates (it also
/// reads OV, SV and UV with a 16-bit length, unlike PS3.5 Table 7.1-1).
const SHORT_VRS: [&[u8; 2]; 24] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OV",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"SV", b"TM", b"UI", b"UL", b"US", b"UV",
];

/// How the data set after the file meta group is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    ExplicitLittle,
    ImplicitLittle,
    ExplicitBig,
}

/// What the check found, and how the file is to be parsed.
#[derive(Debug)]
pub enum Checked {
    /// Every element length fits in the file: dicom-rs may read the file as it is.
    Plain,
    /// Deflated Explicit VR Little Endian: the file's "DICM" and meta group (the preamble left
    /// out) and the inflated data set, whose element lengths fit in the inflated bytes. Parse
    /// these, not the file.
    Deflated { meta: Vec<u8>, data_set: Vec<u8> },
}

/// Transfer syntax UID of Deflated Explicit VR Little Endian (PS3.5 A.5).
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";

/// Checks `path`; `Err` says which element declares too much, or why a deflated data set
/// cannot be inflated (meant for an error message that already names the file).
pub fn check_file(path: &Path) -> Result<Checked, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot stat: {e}"))?
        .len();
    check_reader(BufReader::new(file), len)
}

/// The walk over any seekable source of `len` bytes.
fn check_reader(mut r: impl Read + Seek, len: u64) -> Result<Checked, String> {
    let mut w = Walker { r: &mut r, len };
    // 128-byte preamble and "DICM", or neither.
    let mut head = [0u8; 132];
    let magic = w.read_exact(&mut head) && &head[128..] == b"DICM";
    let start = if magic { 132 } else { 0 };
    w.seek(start)?;
    // File meta group (0002,xxxx): always explicit VR little endian.
    let mut syntax = String::new();
    let mut pos = start;
    // The loop also ends where no whole element header is left: the meta group ends with the
    // file, or (deflated) the stream is shorter than a header; the data set below decides.
    while let Some(h) = w.header(pos, Encoding::ExplicitLittle)? {
        if h.tag.0 != 0x0002 {
            if !magic && pos == start {
                // Neither preamble nor meta group: not DICOM; dicom-rs says so itself.
                return Ok(Checked::Plain);
            }
            break;
        }
        let value_end = w.check_fits(&h)?;
        if h.tag == (0x0002, 0x0010) {
            let mut uid = vec![0u8; h.length as usize];
            w.seek(h.value_start)?;
            if !w.read_exact(&mut uid) {
                return Ok(Checked::Plain);
            }
            syntax = String::from_utf8_lossy(&uid)
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        pos = value_end;
    }
    let encoding = match syntax.as_str() {
        "1.2.840.10008.1.2" => Encoding::ImplicitLittle,
        "1.2.840.10008.1.2.2" => Encoding::ExplicitBig,
        // The meta group is handed on with its "DICM" (dicom-rs checks it), not the preamble.
        DEFLATED_EXPLICIT_VR_LE => return check_deflated(w.r, start.saturating_sub(4), pos),
        // Unknown or missing (a damaged meta group), and the other syntaxes dicom-rs cannot
        // decode the data set of (JPIP Referenced Deflate...): dicom-rs reads on as explicit
        // VR LE, the raw bytes as they are, and so do we.
        _ => Encoding::ExplicitLittle,
    };
    w.walk_data_set(pos, encoding)?;
    Ok(Checked::Plain)
}

/// Deflated data set (raw deflate after the meta group, PS3.5 A.5): inflated in memory (up to
/// [`inflate::MAX_INFLATED`]; a corrupt or truncated stream is refused), then walked like any
/// explicit VR little endian data set. `meta_start..pos` is handed back as the meta group.
fn check_deflated(
    r: &mut (impl Read + Seek),
    meta_start: u64,
    pos: u64,
) -> Result<Checked, String> {
    r.seek(SeekFrom::Start(meta_start))
        .map_err(|e| format!("cannot seek: {e}"))?;
    // pos > meta_start: the meta group held at least the transfer syntax element.
    let mut meta = vec![0u8; (pos - meta_start) as usize];
    r.read_exact(&mut meta)
        .map_err(|e| format!("cannot read the meta group: {e}"))?;
    let mut compressed = Vec::new();
    r.read_to_end(&mut compressed)
        .map_err(|e| format!("cannot read the data set: {e}"))?;
    let data_set = inflate::inflate_capped(&compressed, inflate::MAX_INFLATED)?;
    tracing::debug!(
        "deflated data set: {} bytes inflate to {}",
        compressed.len(),
        data_set.len()
    );
    let len = data_set.len() as u64;
    let mut cursor = std::io::Cursor::new(data_set);
    Walker {
        r: &mut cursor,
        len,
    }
    .walk_data_set(0, Encoding::ExplicitLittle)?;
    Ok(Checked::Deflated {
        meta,
        data_set: cursor.into_inner(),
    })
}

struct Walker<'a, R> {
    r: &'a mut R,
    len: u64,
}

/// One element header.
struct Header {
    tag: (u16, u16),
    /// Explicit VR, or None (implicit VR, item and delimiter tags).
    vr: Option<[u8; 2]>,
    length: u32,
    /// File offset of the header and of the value.
    at: u64,
    value_start: u64,
}

impl<R: Read + Seek> Walker<'_, R> {
    fn seek(&mut self, pos: u64) -> Result<(), String> {
        self.r
            .seek(SeekFrom::Start(pos))
            .map(|_| ())
            .map_err(|e| format!("cannot seek: {e}"))
    }

    /// Fills `buf`; false at the end of the file (or on a read error, which dicom-rs reports).
    fn read_exact(&mut self, buf: &mut [u8]) -> bool {
        self.r.read_exact(buf).is_ok()
    }

    /// The element header at `pos`, or None when the file ends before a whole header.
    fn header(&mut self, pos: u64, enc: Encoding) -> Result<Option<Header>, String> {
        self.seek(pos)?;
        let mut b = [0u8; 8];
        if !self.read_exact(&mut b) {
            return Ok(None);
        }
        let big = enc == Encoding::ExplicitBig;
        let u16_at = |i: usize| {
            let x = [b[i], b[i + 1]];
            if big {
                u16::from_be_bytes(x)
            } else {
                u16::from_le_bytes(x)
            }
        };
        let tag = (u16_at(0), u16_at(2));
        let u32_of = |x: [u8; 4]| {
            if big {
                u32::from_be_bytes(x)
            } else {
                u32::from_le_bytes(x)
            }
        };
        let implicit = enc == Encoding::ImplicitLittle || tag.0 == 0xFFFE;
        if implicit {
            return Ok(Some(Header {
                tag,
                vr: None,
                length: u32_of([b[4], b[5], b[6], b[7]]),
                at: pos,
                value_start: pos + 8,
            }));
        }
        let vr = [b[4], b[5]];
        if !SHORT_VRS.contains(&&vr) {
            let mut l = [0u8; 4];
            if !self.read_exact(&mut l) {
                return Ok(None);
            }
            return Ok(Some(Header {
                tag,
                vr: Some(vr),
                length: u32_of(l),
                at: pos,
                value_start: pos + 12,
            }));
        }
        Ok(Some(Header {
            tag,
            vr: Some(vr),
            length: u32::from(u16_at(6)),
            at: pos,
            value_start: pos + 8,
        }))
    }

    /// The end of a defined-length value, or an error when it is past the end of the file.
    fn check_fits(&self, h: &Header) -> Result<u64, String> {
        let end = h.value_start + u64::from(h.length);
        if end > self.len {
            return Err(format!(
                "element ({:04X},{:04X}) at offset {} declares {} bytes, only {} left in the file",
                h.tag.0,
                h.tag.1,
                h.at,
                h.length,
                self.len.saturating_sub(h.value_start)
            ));
        }
        Ok(end)
    }

    /// Walks element headers from `pos` to the end of the file, flat: sequence and item
    /// contents are walked in place (so nested lengths are checked), delimiters skipped;
    /// inside encapsulated pixel data, items are fragments and are skipped whole.
    fn walk_data_set(&mut self, mut pos: u64, enc: Encoding) -> Result<(), String> {
        let mut in_fragments = false;
        while let Some(h) = self.header(pos, enc)? {
            if h.length == UNDEFINED {
                if h.vr == Some(*b"UN") {
                    // Its contents are implicit VR (PS3.5 §6.2.2): stop here, dicom-rs checks.
                    return Ok(());
                }
                // A sequence, an item, or encapsulated pixel data: its contents follow.
                in_fragments |= h.tag == PIXEL_DATA;
                pos = h.value_start;
                continue;
            }
            let end = self.check_fits(&h)?;
            if h.tag == SEQUENCE_DELIMITER {
                in_fragments = false;
            }
            let descend = if h.tag == ITEM {
                !in_fragments
            } else {
                match h.vr {
                    Some(vr) => &vr == b"SQ",
                    // Implicit VR: a value that starts with an item tag is a sequence.
                    None => h.length >= 8 && self.starts_with_item(h.value_start, enc)?,
                }
            };
            pos = if descend { h.value_start } else { end };
        }
        Ok(())
    }

    fn starts_with_item(&mut self, pos: u64, enc: Encoding) -> Result<bool, String> {
        Ok(self.header(pos, enc)?.is_some_and(|h| h.tag == ITEM))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A file: preamble, DICM, meta group with the transfer syntax, then `body`.
    fn file(syntax: &str, body: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 128];
        out.extend(b"DICM");
        let mut uid = syntax.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        out.extend([0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        out.extend((uid.len() as u16).to_le_bytes());
        out.extend(uid);
        out.extend(body);
        out
    }

    fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8], declared: Option<u32>) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(tag.0.to_le_bytes());
        out.extend(tag.1.to_le_bytes());
        out.extend(vr);
        let len = declared.unwrap_or(value.len() as u32);
        if !SHORT_VRS.contains(&vr) {
            out.extend([0, 0]);
            out.extend(len.to_le_bytes());
        } else {
            out.extend((len as u16).to_le_bytes());
        }
        out.extend(value);
        out
    }

    fn check(bytes: &[u8]) -> Result<Checked, String> {
        check_reader(Cursor::new(bytes), bytes.len() as u64)
    }

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

    #[test]
    fn consistent_file_passes() {
        let mut body = explicit((0x0010, 0x0010), b"PN", b"DOE^JOHN", None);
        body.extend(explicit((0x7FE0, 0x0010), b"OW", &[0; 32], None));
        assert!(matches!(
            check(&file(EXPLICIT_LE, &body)),
            Ok(Checked::Plain)
        ));
    }

    #[test]
    fn huge_declared_length_is_refused() {
        let mut body = explicit((0x0010, 0x0010), b"PN", b"DOE^JOHN", None);
        body.extend(explicit(
            (0x7FE0, 0x0010),
            b"OW",
            &[0; 32],
            Some(2_291_021_782),
        ));
        let err = check(&file(EXPLICIT_LE, &body)).unwrap_err();
        assert!(
            err.contains("(7FE0,0010)") && err.contains("2291021782 bytes, only 32 left"),
            "{err}"
        );
    }

    #[test]
    fn nested_length_inside_a_sequence_is_checked() {
        // An undefined-length sequence holding an undefined-length item whose element lies.
        let inner = explicit((0x0008, 0x1150), b"UI", b"1.2", Some(0xFFF0));
        let mut seq = Vec::new();
        seq.extend(0x0008u16.to_le_bytes());
        seq.extend(0x1140u16.to_le_bytes());
        seq.extend(b"SQ\0\0");
        seq.extend(UNDEFINED.to_le_bytes());
        seq.extend([0xFE, 0xFF, 0x00, 0xE0]);
        seq.extend(UNDEFINED.to_le_bytes());
        seq.extend(inner);
        let err = check(&file(EXPLICIT_LE, &seq)).unwrap_err();
        assert!(err.contains("(0008,1150)"), "{err}");
    }

    #[test]
    fn encapsulated_fragments_are_skipped_but_bounded() {
        let mut body = Vec::new();
        body.extend(0x7FE0u16.to_le_bytes());
        body.extend(0x0010u16.to_le_bytes());
        body.extend(b"OB\0\0");
        body.extend(UNDEFINED.to_le_bytes());
        // Empty basic offset table, then a fragment whose bytes look like a huge element.
        body.extend([0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        body.extend([0xFE, 0xFF, 0x00, 0xE0, 8, 0, 0, 0]);
        body.extend([0x10, 0x00, 0x10, 0x00, b'O', b'B', 0, 0]);
        body.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let good = file(EXPLICIT_LE, &body);
        check(&good).unwrap();
        // A fragment longer than the file.
        let mut bad = good.clone();
        let at = bad.len() - 20;
        bad[at..at + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(check(&bad).unwrap_err().contains("(FFFE,E000)"));
    }

    #[test]
    fn unknown_vr_has_a_32_bit_length_as_in_dicom_rs() {
        // VR "U\xFF" is read as UN: reserved bytes, then 4 length bytes ("1." reserved, then "2.3." = 0x2E332E32).
        let mut f = file(EXPLICIT_LE, &[]);
        f.extend([0x02, 0x00, 0x12, 0x00, b'U', 0xFF]);
        f.extend(b"1.2.3.4.5");
        let err = check(&f).unwrap_err();
        assert!(
            err.contains("(0002,0012)") && err.contains("775106098 bytes"),
            "{err}"
        );
    }

    fn deflate(b: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn deflated_data_set_is_inflated_checked_and_handed_back() {
        let mut body = explicit((0x0010, 0x0010), b"PN", b"DOE^JOHN", None);
        body.extend(explicit((0x7FE0, 0x0010), b"OW", &[0; 64], None));
        let f = file(DEFLATED_EXPLICIT_VR_LE, &deflate(&body));
        match check(&f).unwrap() {
            Checked::Deflated { meta, data_set } => {
                assert_eq!(data_set, body);
                // "DICM" and the meta group, up to the start of the deflated stream.
                assert_eq!(meta, f[128..132 + 8 + 22]);
            }
            Checked::Plain => panic!("deflated file checked as plain"),
        }
        let n = body.len();
        body[n - 68..n - 64].copy_from_slice(&3_635_603_344u32.to_le_bytes());
        let err = check(&file(DEFLATED_EXPLICIT_VR_LE, &deflate(&body))).unwrap_err();
        assert!(
            err.contains("(7FE0,0010)") && err.contains("3635603344"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_or_truncated_deflate_stream_is_refused() {
        // The raw bytes of this body, read as explicit VR LE (what dicom-rs 0.8 does with a
        // deflated file), declare a 4 GB element; as deflate they are corrupt at byte 0.
        let body = explicit((0x7FE0, 0x0010), b"OB", &[], Some(0xF000_0000));
        let err = check(&file(DEFLATED_EXPLICIT_VR_LE, &body)).unwrap_err();
        assert!(err.contains("deflated data set is corrupt"), "{err}");
        let z = deflate(&explicit((0x0010, 0x0010), b"PN", b"DOE^JOHN", None));
        let err = check(&file(DEFLATED_EXPLICIT_VR_LE, &z[..z.len() - 2])).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn other_stub_syntaxes_are_walked_raw_as_dicom_rs_reads_them() {
        // JPIP Referenced Deflate: dicom-rs has no codec and reads the bytes as they are.
        let body = explicit((0x7FE0, 0x0010), b"OB", &[], Some(0xF000_0000));
        let err = check(&file("1.2.840.10008.1.2.4.95", &body)).unwrap_err();
        assert!(err.contains("(7FE0,0010)"), "{err}");
    }

    #[test]
    fn implicit_vr_lengths_are_checked() {
        let mut body = Vec::new();
        body.extend([0x10, 0x00, 0x10, 0x00]);
        body.extend(8u32.to_le_bytes());
        body.extend(b"DOE^JOHN");
        body.extend([0x28, 0x00, 0x10, 0x00]);
        body.extend(70_000u32.to_le_bytes());
        body.extend([64, 0]);
        let err = check(&file("1.2.840.10008.1.2", &body)).unwrap_err();
        assert!(err.contains("(0028,0010)"), "{err}");
    }

    #[test]
    fn truncated_headers_are_left_to_the_parser() {
        let body = explicit((0x0010, 0x0010), b"PN", b"DOE^JOHN", None);
        let f = file(EXPLICIT_LE, &body);
        for cut in [0, 100, 131, 135, f.len() - 9] {
            check(&f[..cut]).unwrap();
        }
    }
}
