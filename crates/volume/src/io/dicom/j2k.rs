//! JPEG 2000 pixel data (transfer syntaxes 1.2.840.10008.1.2.4.90 and .91): a codestream
//! validator of our own, then decoding with a memory-safe decoder.
//!
//! # Why not dicom-pixeldata's decoder
//! dicom-pixeldata decodes JPEG 2000 with `openjp2` 0.6.1, a machine translation of OpenJPEG's
//! C to unsafe Rust. Its tile teardown (`opj_tcd_code_block_dec_deallocate`, tcd.rs) passes the
//! never-allocated (null) `decoded_data` buffer of every code block to `std::alloc::dealloc`,
//! which is undefined behaviour. The buffer is only allocated for partial-window decodes, so
//! this happens on *every* whole-image decode, valid input included: the DICOM fuzz target
//! aborted on its very first input, pydicom's valid `MR_small_jp2klossless.dcm` (kept as
//! `fuzz/regressions/dicom-openjp2-tcd-null.dcm`), where the standard library's debug
//! precondition check caught the null pointer. Normal builds "worked" only because the system
//! allocator's `free(NULL)` is a no-op. No input check can avoid a bug that every input
//! triggers, so the fix is a different decoder: `hayro-jpeg2000`, which is
//! `#![forbid(unsafe_code)]` and, built without its `simd` feature (as here), pulls in no unsafe
//! dependency. Undefined behaviour is then excluded by construction rather than by testing.
//!
//! # Why a validator anyway
//! The decoder is lenient (like OpenJPEG it decodes what it can of a damaged stream), while a
//! CT volume must not be silently built from a slice that does not match its DICOM header. So
//! before decoding, [`parse_codestream`] reads the main header and walks the tile-parts
//! (ITU-T T.800 | ISO/IEC 15444-1, Annex A), checking every length against the buffer and every
//! field against its allowed range, and [`check_against`] compares the result with the DICOM
//! attributes (Rows, Columns, SamplesPerPixel, BitsAllocated). Each problem is a typed
//! [`J2kError`]; [`decode_frame`] turns it into a [`VolumeError`] naming the file and the frame.
//!
//! # Last line of defence
//! The decode runs inside [`std::panic::catch_unwind`] (through
//! [`super::pixels::contain_panic`]), so a panic in the decoder (an index out
//! of range on input our validator did not foresee) becomes an error instead of tearing down
//! the caller. This catches panics only: it cannot catch undefined behaviour (which is why the
//! decoder must be free of `unsafe`), an abort, or running out of memory. The default panic hook
//! still prints the panic message to stderr before we turn it into an error.

use crate::{Result, VolumeError};
use std::path::Path;

/// Largest frame we decode (`Rows × Columns`): 8192², far above any CT slice. Bounds the
/// decoder's memory for a header that declares an absurd size.
pub const MAX_FRAME_PIXELS: u64 = 1 << 26;

// Marker codes (T.800 Table A.2).
const SOC: u16 = 0xFF4F;
const SIZ: u16 = 0xFF51;
const COD: u16 = 0xFF52;
const COC: u16 = 0xFF53;
const QCD: u16 = 0xFF5C;
const SOT: u16 = 0xFF90;
const SOD: u16 = 0xFF93;
const EOC: u16 = 0xFFD9;

/// JP2 file signature box (T.800 Annex I): some encoders wrap the codestream in a JP2 file.
const JP2_SIGNATURE: &[u8] = b"\x00\x00\x00\x0CjP  \x0D\x0A\x87\x0A";

/// What is wrong with a JPEG 2000 codestream, or between it and the DICOM header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum J2kError {
    #[error(
        "codestream truncated: {what} needs {needed} bytes at offset {offset}, {available} left"
    )]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error(
        "not a JPEG 2000 codestream: expected {expected} at offset {offset}, found {found:#06X}"
    )]
    UnexpectedMarker {
        expected: &'static str,
        offset: usize,
        found: u16,
    },
    #[error("marker segment {marker:#06X} at offset {offset}: length {length} is invalid ({why})")]
    BadLength {
        marker: u16,
        offset: usize,
        length: usize,
        why: &'static str,
    },
    #[error("SIZ: {0}")]
    Size(String),
    #[error("{marker} at offset {offset}: {why}")]
    Coding {
        marker: &'static str,
        offset: usize,
        why: String,
    },
    #[error("main header has no {0} marker segment (required)")]
    Missing(&'static str),
    #[error(
        "tile-part at offset {offset}: tile index {index} outside the tile grid of {tiles} tiles"
    )]
    TileIndex {
        offset: usize,
        index: u16,
        tiles: u32,
    },
    #[error("tile-part at offset {offset}: {why}")]
    TilePart { offset: usize, why: String },
    #[error("codestream does not match the DICOM header: {0}")]
    Mismatch(String),
    #[error("JP2 file: {0}")]
    Jp2(String),
}

type J2kResult<T> = std::result::Result<T, J2kError>;

/// One image component as the SIZ marker declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// Bits per sample (1..=38).
    pub precision: u8,
    pub signed: bool,
    /// Horizontal and vertical subsampling (XRsiz, YRsiz).
    pub dx: u8,
    pub dy: u8,
}

/// The facts of a codestream that [`check_against`] compares with the DICOM header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodestreamInfo {
    /// Image area: `Xsiz - XOsiz` by `Ysiz - YOsiz`.
    pub width: u32,
    pub height: u32,
    pub components: Vec<Component>,
    /// Tile grid (columns, rows).
    pub tiles_x: u32,
    pub tiles_y: u32,
    pub tile_parts: usize,
    /// Wavelet decomposition levels of the COD marker.
    pub levels: u8,
    /// True for the reversible 5/3 wavelet (lossless).
    pub reversible: bool,
}

/// The DICOM image attributes a codestream must agree with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DicomImage {
    pub rows: usize,
    pub columns: usize,
    pub samples_per_pixel: usize,
    pub bits_allocated: usize,
    pub bits_stored: usize,
    /// PixelRepresentation 1 (two's complement).
    pub signed: bool,
}

/// A big-endian reader over the codestream that reports truncation as [`J2kError`].
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> J2kResult<&'a [u8]> {
        let available = self.data.len().saturating_sub(self.pos);
        if n > available {
            return Err(J2kError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> J2kResult<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> J2kResult<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> J2kResult<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A marker segment's length field `L` (which counts itself) and its body, checked to lie
    /// inside the buffer.
    fn segment(&mut self, marker: u16, marker_offset: usize) -> J2kResult<&'a [u8]> {
        let length = self.u16("marker segment length")? as usize;
        if length < 2 {
            return Err(J2kError::BadLength {
                marker,
                offset: marker_offset,
                length,
                why: "shorter than its own length field",
            });
        }
        let available = self.data.len() - self.pos;
        if length - 2 > available {
            return Err(J2kError::BadLength {
                marker,
                offset: marker_offset,
                length,
                why: "runs past the end of the data",
            });
        }
        self.take(length - 2, "marker segment")
    }
}

/// Parses and checks a raw codestream (`SOC SIZ ... SOT ... EOC`): the SIZ fields and their
/// mutual constraints (T.800 A.5.1), COD/COC code-block and wavelet parameters (A.6.1, A.6.2),
/// that COD and QCD are present, and that every tile-part (A.4.2) lies inside the buffer and
/// names a tile of the grid, every tile being present. Packet data is not interpreted.
pub fn parse_codestream(data: &[u8]) -> J2kResult<CodestreamInfo> {
    let mut c = Cursor { data, pos: 0 };
    let soc = c.u16("SOC marker")?;
    if soc != SOC {
        return Err(J2kError::UnexpectedMarker {
            expected: "SOC (0xFF4F)",
            offset: 0,
            found: soc,
        });
    }
    let siz_offset = c.pos;
    let siz_marker = c.u16("SIZ marker")?;
    if siz_marker != SIZ {
        return Err(J2kError::UnexpectedMarker {
            expected: "SIZ (0xFF51) right after SOC",
            offset: siz_offset,
            found: siz_marker,
        });
    }
    let siz = parse_siz(c.segment(SIZ, siz_offset)?)?;
    let ncomp = siz.components.len();

    // Main header: marker segments up to the first SOT.
    let mut levels = None;
    let mut reversible = false;
    let mut has_qcd = false;
    loop {
        let offset = c.pos;
        let marker = c.u16("main header marker")?;
        if marker == SOT {
            c.pos = offset;
            break;
        }
        check_marker(marker, offset, "main header marker")?;
        let body = c.segment(marker, offset)?;
        match marker {
            COD => {
                let cod = parse_cod(body, offset)?;
                levels = Some(cod.levels);
                reversible = cod.reversible;
            }
            COC => parse_coc(body, offset, ncomp)?,
            QCD => has_qcd = true,
            SIZ | SOC => {
                return Err(J2kError::UnexpectedMarker {
                    expected: "one SOC and one SIZ only",
                    offset,
                    found: marker,
                })
            }
            _ => tracing::trace!("J2K main header: marker {marker:#06X} at {offset} skipped"),
        }
    }
    let levels = levels.ok_or(J2kError::Missing("COD"))?;
    if !has_qcd {
        return Err(J2kError::Missing("QCD"));
    }

    // Tile-parts, then EOC.
    let tiles = siz.tiles_x * siz.tiles_y;
    let mut seen = vec![false; tiles as usize];
    let mut tile_parts = 0usize;
    loop {
        let offset = c.pos;
        if c.pos == data.len() {
            tracing::debug!("J2K codestream ends after its last tile-part without EOC");
            break;
        }
        let marker = c.u16("SOT or EOC marker")?;
        if marker == EOC {
            // Encapsulated fragments are padded to an even length: allow zero bytes after EOC.
            if let Some(i) = data[c.pos..].iter().position(|&b| b != 0) {
                return Err(J2kError::TilePart {
                    offset: c.pos + i,
                    why: "non-zero bytes after EOC".into(),
                });
            }
            break;
        }
        if marker != SOT {
            return Err(J2kError::UnexpectedMarker {
                expected: "SOT (0xFF90) or EOC (0xFFD9)",
                offset,
                found: marker,
            });
        }
        let (index, end) = parse_tile_part(&mut c, offset, tiles, ncomp)?;
        seen[usize::from(index)] = true;
        tile_parts += 1;
        c.pos = end;
    }
    if tile_parts == 0 {
        return Err(J2kError::TilePart {
            offset: c.pos,
            why: "codestream has no tile-part".into(),
        });
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(J2kError::TilePart {
            offset: c.pos,
            why: format!("tile {missing} of {tiles} has no tile-part"),
        });
    }
    Ok(CodestreamInfo {
        width: siz.width,
        height: siz.height,
        components: siz.components,
        tiles_x: siz.tiles_x,
        tiles_y: siz.tiles_y,
        tile_parts,
        levels,
        reversible,
    })
}

/// Marker codes below 0xFF30 are not markers; 0xFF30..=0xFF3F carry no length (T.800 A.1.3)
/// and are not allowed where we expect a marker segment.
fn check_marker(marker: u16, offset: usize, expected: &'static str) -> J2kResult<()> {
    if marker < 0xFF40 {
        return Err(J2kError::UnexpectedMarker {
            expected,
            offset,
            found: marker,
        });
    }
    Ok(())
}

struct Siz {
    width: u32,
    height: u32,
    tiles_x: u32,
    tiles_y: u32,
    components: Vec<Component>,
}

/// SIZ (T.800 A.5.1): Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz, then
/// Ssiz, XRsiz, YRsiz per component.
fn parse_siz(body: &[u8]) -> J2kResult<Siz> {
    let mut c = Cursor { data: body, pos: 0 };
    let _rsiz = c.u16("SIZ Rsiz")?;
    let [xsiz, ysiz, xo, yo, xt, yt, xto, yto] = [
        c.u32("SIZ Xsiz")?,
        c.u32("SIZ Ysiz")?,
        c.u32("SIZ XOsiz")?,
        c.u32("SIZ YOsiz")?,
        c.u32("SIZ XTsiz")?,
        c.u32("SIZ YTsiz")?,
        c.u32("SIZ XTOsiz")?,
        c.u32("SIZ YTOsiz")?,
    ];
    let csiz = c.u16("SIZ Csiz")?;
    let bad = |m: String| Err(J2kError::Size(m));
    if xo >= xsiz || yo >= ysiz {
        return bad(format!(
            "empty image area: Xsiz {xsiz}, Ysiz {ysiz}, XOsiz {xo}, YOsiz {yo}"
        ));
    }
    if xt == 0 || yt == 0 {
        return bad(format!("zero tile size XTsiz {xt} x YTsiz {yt}"));
    }
    // The first tile must cover the image origin (T.800 equation A-1).
    if xto > xo
        || yto > yo
        || u64::from(xto) + u64::from(xt) <= u64::from(xo)
        || u64::from(yto) + u64::from(yt) <= u64::from(yo)
    {
        return bad(format!(
            "tile grid origin ({xto}, {yto}) with tiles {xt} x {yt} does not cover the image origin ({xo}, {yo})"
        ));
    }
    if csiz == 0 || csiz > 16384 {
        return bad(format!("Csiz {csiz} outside 1..=16384"));
    }
    if body.len() != 36 + 3 * usize::from(csiz) {
        return bad(format!(
            "Lsiz {} does not match Csiz {csiz} (expected {})",
            body.len() + 2,
            38 + 3 * usize::from(csiz)
        ));
    }
    let tiles_x = (xsiz - xto).div_ceil(xt);
    let tiles_y = (ysiz - yto).div_ceil(yt);
    let tiles = u64::from(tiles_x) * u64::from(tiles_y);
    // Isot is 16 bits and 65535 is reserved.
    if tiles > 65535 {
        return bad(format!(
            "{tiles_x} x {tiles_y} tiles: more than the 65535 a codestream can index"
        ));
    }
    let mut components = Vec::with_capacity(usize::from(csiz));
    for i in 0..csiz {
        let ssiz = c.u8("SIZ Ssiz")?;
        let dx = c.u8("SIZ XRsiz")?;
        let dy = c.u8("SIZ YRsiz")?;
        let precision = (ssiz & 0x7F) + 1;
        if precision > 38 {
            return bad(format!("component {i}: precision {precision} bits > 38"));
        }
        if dx == 0 || dy == 0 {
            return bad(format!("component {i}: zero subsampling {dx} x {dy}"));
        }
        components.push(Component {
            precision,
            signed: ssiz & 0x80 != 0,
            dx,
            dy,
        });
    }
    Ok(Siz {
        width: xsiz - xo,
        height: ysiz - yo,
        tiles_x,
        tiles_y,
        components,
    })
}

struct Cod {
    levels: u8,
    reversible: bool,
}

/// COD (T.800 A.6.1): Scod, progression order, layers, multiple component transform, then
/// SPcod.
fn parse_cod(body: &[u8], offset: usize) -> J2kResult<Cod> {
    let mut c = Cursor { data: body, pos: 0 };
    let scod = c.u8("COD Scod")?;
    let progression = c.u8("COD progression order")?;
    let layers = c.u16("COD layers")?;
    let mct = c.u8("COD multiple component transform")?;
    let bad = |why: String| {
        Err(J2kError::Coding {
            marker: "COD",
            offset,
            why,
        })
    };
    if progression > 4 {
        return bad(format!("progression order {progression} (0..=4 allowed)"));
    }
    if layers == 0 {
        return bad("zero quality layers".into());
    }
    if mct > 1 {
        return bad(format!("multiple component transform {mct} (0 or 1)"));
    }
    let (levels, reversible) = parse_spcod(&mut c, scod, "COD", offset)?;
    Ok(Cod { levels, reversible })
}

/// COC (T.800 A.6.2): Ccoc (one byte, two when Csiz > 256), Scoc, SPcoc.
fn parse_coc(body: &[u8], offset: usize, ncomp: usize) -> J2kResult<()> {
    let mut c = Cursor { data: body, pos: 0 };
    let comp = if ncomp > 256 {
        usize::from(c.u16("COC Ccoc")?)
    } else {
        usize::from(c.u8("COC Ccoc")?)
    };
    if comp >= ncomp {
        return Err(J2kError::Coding {
            marker: "COC",
            offset,
            why: format!("component {comp} of {ncomp}"),
        });
    }
    let scoc = c.u8("COC Scoc")?;
    parse_spcod(&mut c, scoc, "COC", offset).map(|_| ())
}

/// SPcod/SPcoc (T.800 Table A.15): decomposition levels, code-block size exponents, code-block
/// style, wavelet, then one precinct size byte per resolution when Scod bit 0 is set. The
/// segment must end exactly there.
fn parse_spcod(
    c: &mut Cursor<'_>,
    style: u8,
    marker: &'static str,
    offset: usize,
) -> J2kResult<(u8, bool)> {
    let levels = c.u8("decomposition levels")?;
    let xcb = c.u8("code-block width exponent")?;
    let ycb = c.u8("code-block height exponent")?;
    let _cblk_style = c.u8("code-block style")?;
    let wavelet = c.u8("wavelet transform")?;
    let bad = |why: String| {
        Err(J2kError::Coding {
            marker,
            offset,
            why,
        })
    };
    if levels > 32 {
        return bad(format!("{levels} decomposition levels (at most 32)"));
    }
    // Code-block width and height are 2^(xcb+2), 2^(ycb+2): each 4..=1024, area <= 4096.
    if xcb > 8 || ycb > 8 || xcb + ycb > 8 {
        return bad(format!(
            "code-block exponents {xcb}, {ycb} (each <= 8, sum <= 8)"
        ));
    }
    if wavelet > 1 {
        return bad(format!("wavelet transform {wavelet} (0: 9/7, 1: 5/3)"));
    }
    if style & 1 != 0 {
        for r in 0..=levels {
            let ppx = c.u8("precinct size")?;
            if r > 0 && (ppx & 0x0F == 0 || ppx >> 4 == 0) {
                return bad(format!("resolution {r}: precinct exponent 0 ({ppx:#04X})"));
            }
        }
    }
    if c.pos != c.data.len() {
        return bad(format!(
            "{} bytes after the coding parameters",
            c.data.len() - c.pos
        ));
    }
    Ok((levels, wavelet == 1))
}

/// A tile-part at `offset` (its SOT marker): Lsot, Isot, Psot, TPsot, TNsot (T.800 A.4.2), then
/// its header's marker segments up to SOD. Returns the tile index and where the tile-part ends.
fn parse_tile_part(
    c: &mut Cursor<'_>,
    offset: usize,
    tiles: u32,
    ncomp: usize,
) -> J2kResult<(u16, usize)> {
    let body = c.segment(SOT, offset)?;
    if body.len() != 8 {
        return Err(J2kError::BadLength {
            marker: SOT,
            offset,
            length: body.len() + 2,
            why: "Lsot must be 10",
        });
    }
    let mut s = Cursor { data: body, pos: 0 };
    let index = s.u16("SOT Isot")?;
    let psot = s.u32("SOT Psot")? as usize;
    let part = s.u8("SOT TPsot")?;
    let parts = s.u8("SOT TNsot")?;
    if u32::from(index) >= tiles {
        return Err(J2kError::TileIndex {
            offset,
            index,
            tiles,
        });
    }
    if parts != 0 && part >= parts {
        return Err(J2kError::TilePart {
            offset,
            why: format!("tile-part {part} of {parts}"),
        });
    }
    let available = c.data.len() - offset;
    // Psot 0: the tile-part runs to EOC (only allowed for the last one), which is followed by
    // nothing but zero padding.
    let end = if psot == 0 {
        let unpadded = c.data.len() - c.data.iter().rev().take_while(|&&b| b == 0).count();
        let eoc = c.data[..unpadded].ends_with(&EOC.to_be_bytes());
        (if eoc { unpadded - 2 } else { c.data.len() }).max(c.pos)
    } else if psot < 14 {
        return Err(J2kError::TilePart {
            offset,
            why: format!("Psot {psot} is shorter than SOT + SOD (14 bytes)"),
        });
    } else if psot > available {
        return Err(J2kError::TilePart {
            offset,
            why: format!("Psot {psot} runs past the end of the data ({available} bytes left)"),
        });
    } else {
        offset + psot
    };
    // Tile-part header up to SOD.
    let mut h = Cursor {
        data: &c.data[..end],
        pos: c.pos,
    };
    loop {
        let at = h.pos;
        let marker = h.u16("tile-part header marker")?;
        if marker == SOD {
            break;
        }
        check_marker(marker, at, "tile-part header marker or SOD")?;
        let seg = h.segment(marker, at)?;
        match marker {
            COD => {
                parse_cod(seg, at)?;
            }
            COC => parse_coc(seg, at, ncomp)?,
            SOT | SIZ | SOC | EOC => {
                return Err(J2kError::UnexpectedMarker {
                    expected: "tile-part header marker or SOD",
                    offset: at,
                    found: marker,
                })
            }
            _ => {}
        }
    }
    Ok((index, end))
}

/// Compares the codestream with the DICOM image attributes (PS3.5 §8.2.4): the image area must
/// be Columns × Rows, the components SamplesPerPixel, unsubsampled, with a precision that fits
/// BitsAllocated. A precision differing from BitsStored or a sign differing from
/// PixelRepresentation occurs in valid files (the codestream then governs) and is only logged.
pub fn check_against(info: &CodestreamInfo, dicom: &DicomImage) -> J2kResult<()> {
    let bad = |m: String| Err(J2kError::Mismatch(m));
    if info.width as usize != dicom.columns || info.height as usize != dicom.rows {
        return bad(format!(
            "image is {} x {} (columns x rows), the header says Columns {} x Rows {}",
            info.width, info.height, dicom.columns, dicom.rows
        ));
    }
    if info.components.len() != dicom.samples_per_pixel {
        return bad(format!(
            "{} components (Csiz), SamplesPerPixel is {}",
            info.components.len(),
            dicom.samples_per_pixel
        ));
    }
    for (i, comp) in info.components.iter().enumerate() {
        if comp.dx != 1 || comp.dy != 1 {
            return bad(format!(
                "component {i} is subsampled {} x {}",
                comp.dx, comp.dy
            ));
        }
        if usize::from(comp.precision) > dicom.bits_allocated {
            return bad(format!(
                "component {i} has {} bits, BitsAllocated is {}",
                comp.precision, dicom.bits_allocated
            ));
        }
        if usize::from(comp.precision) != dicom.bits_stored || comp.signed != dicom.signed {
            tracing::debug!(
                "J2K component {i}: {} bits {} vs BitsStored {} {} (the codestream is used)",
                comp.precision,
                if comp.signed { "signed" } else { "unsigned" },
                dicom.bits_stored,
                if dicom.signed { "signed" } else { "unsigned" }
            );
        }
    }
    Ok(())
}

/// The codestream inside a JP2 file (its `jp2c` box), or `data` itself when it is not one.
fn codestream_of(data: &[u8]) -> J2kResult<&[u8]> {
    if !data.starts_with(JP2_SIGNATURE) {
        return Ok(data);
    }
    let mut pos = 0usize;
    while pos < data.len() {
        let mut c = Cursor { data, pos };
        let length = c
            .u32("JP2 box length")
            .map_err(|e| J2kError::Jp2(e.to_string()))?;
        let kind = c
            .take(4, "JP2 box type")
            .map_err(|e| J2kError::Jp2(e.to_string()))?;
        let (header, length) = match length {
            0 => (8, data.len() - pos),
            1 => {
                let big = c
                    .take(8, "JP2 box XLBox")
                    .map_err(|e| J2kError::Jp2(e.to_string()))?;
                let l = u64::from_be_bytes(big.try_into().unwrap_or([0; 8]));
                (16, usize::try_from(l).unwrap_or(usize::MAX))
            }
            l => (8, l as usize),
        };
        if length < header || length > data.len() - pos {
            return Err(J2kError::Jp2(format!(
                "box at offset {pos} has length {length}, {} bytes left",
                data.len() - pos
            )));
        }
        if kind == b"jp2c" {
            return Ok(&data[pos + header..pos + length]);
        }
        pos += length;
    }
    Err(J2kError::Jp2("no contiguous codestream (jp2c) box".into()))
}

/// Validates `data` (one frame's JPEG 2000 codestream, or a JP2 file), checks it against the
/// DICOM header, and decodes it to stored values, row-major (`rows × columns`), in the
/// codestream's sign. Errors name `path` and the frame.
pub fn decode_frame(
    path: &Path,
    frame: usize,
    data: &[u8],
    dicom: &DicomImage,
) -> Result<Vec<f64>> {
    let fail = |m: String| VolumeError::format(path, format!("JPEG 2000 frame {frame}: {m}"));
    let pixels = dicom.rows as u64 * dicom.columns as u64;
    if pixels > MAX_FRAME_PIXELS {
        return Err(VolumeError::unsupported(
            path,
            format!(
                "JPEG 2000 frame {frame}: {} x {} pixels, more than the {MAX_FRAME_PIXELS} we decode",
                dicom.rows, dicom.columns
            ),
        ));
    }
    let stream = codestream_of(data).map_err(|e| fail(e.to_string()))?;
    let info = parse_codestream(stream).map_err(|e| fail(e.to_string()))?;
    check_against(&info, dicom).map_err(|e| fail(e.to_string()))?;
    tracing::debug!(
        "{}: JPEG 2000 frame {frame}: {} x {}, {} x {} tiles in {} tile-parts, {} levels, {}",
        path.display(),
        info.width,
        info.height,
        info.tiles_x,
        info.tiles_y,
        info.tile_parts,
        info.levels,
        if info.reversible {
            "reversible"
        } else {
            "irreversible"
        }
    );
    let decoded = super::pixels::contain_panic(|| decode_samples(stream))
        .map_err(fail)?
        .map_err(fail)?;
    let comp = info.components[0];
    if decoded.len() != dicom.rows * dicom.columns {
        return Err(fail(format!(
            "decoded {} samples, Rows x Columns = {}",
            decoded.len(),
            dicom.rows * dicom.columns
        )));
    }
    Ok(to_stored(&decoded, comp))
}

/// Decodes with hayro-jpeg2000: the samples of the (single) component.
fn decode_samples(stream: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let settings = hayro_jpeg2000::DecodeSettings {
        resolve_palette_indices: false,
        strict: false,
        target_resolution: None,
    };
    let image = hayro_jpeg2000::Image::new(stream, &settings)
        .map_err(|e| format!("cannot read the codestream: {e}"))?;
    let mut ctx = hayro_jpeg2000::DecoderContext::default();
    let decoded = image
        .decode(&mut ctx)
        .map_err(|e| format!("cannot decode: {e}"))?;
    match decoded.components() {
        [one] => Ok(one.samples().to_vec()),
        many => Err(format!(
            "decoder returned {} components, expected 1",
            many.len()
        )),
    }
}

/// The decoder returns every component as unsigned values (it adds the DC level shift
/// 2^(precision-1) whatever the sign); undo the shift for signed components, round (samples of
/// the irreversible 9/7 wavelet are not integers) and clamp to the component's range.
fn to_stored(samples: &[f32], comp: Component) -> Vec<f64> {
    let p = i32::from(comp.precision);
    let (lo, hi, shift) = if comp.signed {
        (
            -(2f64.powi(p - 1)),
            2f64.powi(p - 1) - 1.0,
            2f64.powi(p - 1),
        )
    } else {
        (0.0, 2f64.powi(p) - 1.0, 0.0)
    };
    samples
        .iter()
        .map(|&v| (f64::from(v) - shift).round().clamp(lo, hi))
        .collect()
}

#[cfg(test)]
mod tests;
