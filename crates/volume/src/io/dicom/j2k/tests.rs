//! Unit tests of the JPEG 2000 codestream validator on hand-built codestreams (marker layout of
//! ITU-T T.800 Annex A). Packet data is filler: the validator does not interpret it.

use super::*;

/// Parameters of a hand-built codestream.
#[derive(Clone)]
struct Spec {
    size: (u32, u32),
    offset: (u32, u32),
    tile: (u32, u32),
    /// (Ssiz, XRsiz, YRsiz) per component.
    components: Vec<(u8, u8, u8)>,
    /// Override of the SIZ component count (Csiz) written in the header.
    csiz: Option<u16>,
    cod: bool,
    qcd: bool,
    /// (Isot, Psot override) per tile-part; `None` computes the real length.
    tile_parts: Vec<(u16, Option<u32>)>,
    eoc: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            size: (64, 48),
            offset: (0, 0),
            tile: (64, 48),
            components: vec![(0x8F, 1, 1)], // signed 16 bits, unsubsampled
            csiz: None,
            cod: true,
            qcd: true,
            tile_parts: vec![(0, None)],
            eoc: true,
        }
    }
}

fn segment(out: &mut Vec<u8>, marker: u16, body: &[u8]) {
    out.extend(marker.to_be_bytes());
    out.extend(((body.len() + 2) as u16).to_be_bytes());
    out.extend(body);
}

fn build(s: &Spec) -> Vec<u8> {
    let mut out = SOC.to_be_bytes().to_vec();
    let mut siz = vec![0, 0]; // Rsiz
    for v in [
        s.size.0, s.size.1, s.offset.0, s.offset.1, s.tile.0, s.tile.1, 0, 0,
    ] {
        siz.extend(v.to_be_bytes());
    }
    let csiz = s.csiz.unwrap_or(s.components.len() as u16);
    siz.extend(csiz.to_be_bytes());
    for &(ssiz, dx, dy) in &s.components {
        siz.extend([ssiz, dx, dy]);
    }
    segment(&mut out, SIZ, &siz);
    if s.cod {
        // Scod 0, LRCP, 1 layer, no MCT; 5 levels, 64x64 code-blocks, style 0, 5/3 wavelet.
        segment(&mut out, COD, &[0, 0, 0, 1, 0, 5, 4, 4, 0, 1]);
    }
    if s.qcd {
        segment(&mut out, QCD, &[0x40, 0x80, 0x88, 0x88]);
    }
    segment(&mut out, 0xFF64, b"\x00\x01hand-built"); // COM: skipped
    for &(index, psot) in &s.tile_parts {
        let packets = [0x12u8, 0x34, 0x56, 0x78, 0x9A];
        let real = 12 + 2 + packets.len() as u32;
        out.extend(SOT.to_be_bytes());
        out.extend(10u16.to_be_bytes());
        out.extend(index.to_be_bytes());
        out.extend(psot.unwrap_or(real).to_be_bytes());
        out.extend([0, 1]);
        out.extend(SOD.to_be_bytes());
        out.extend(packets);
    }
    if s.eoc {
        out.extend(EOC.to_be_bytes());
    }
    out
}

fn dicom(rows: usize, columns: usize) -> DicomImage {
    DicomImage {
        rows,
        columns,
        samples_per_pixel: 1,
        bits_allocated: 16,
        bits_stored: 16,
        signed: true,
    }
}

#[test]
fn valid_hand_built_codestream_parses() {
    let info = parse_codestream(&build(&Spec::default())).unwrap();
    assert_eq!((info.width, info.height), (64, 48));
    assert_eq!((info.tiles_x, info.tiles_y, info.tile_parts), (1, 1, 1));
    assert_eq!(info.levels, 5);
    assert!(info.reversible);
    assert_eq!(
        info.components,
        vec![Component {
            precision: 16,
            signed: true,
            dx: 1,
            dy: 1
        }]
    );
    check_against(&info, &dicom(48, 64)).unwrap();
}

#[test]
fn image_offset_and_tile_grid_are_accounted_for() {
    // 100 x 70 grid with the image starting at (10, 5): a 90 x 65 image in 4 x 3 tiles of 32.
    let spec = Spec {
        size: (100, 70),
        offset: (10, 5),
        tile: (32, 32),
        tile_parts: (0..12).map(|i| (i, None)).collect(),
        ..Spec::default()
    };
    let info = parse_codestream(&build(&spec)).unwrap();
    assert_eq!((info.width, info.height), (90, 65));
    assert_eq!((info.tiles_x, info.tiles_y, info.tile_parts), (4, 3, 12));
    // One tile missing is refused.
    let spec = Spec {
        tile_parts: (0..11).map(|i| (i, None)).collect(),
        ..spec
    };
    let err = parse_codestream(&build(&spec)).unwrap_err();
    assert!(err.to_string().contains("tile 11 of 12"), "{err}");
}

#[test]
fn truncated_siz_is_refused() {
    let full = build(&Spec::default());
    // SOC (2) + SIZ marker (2) + Lsiz (2) + part of the body.
    for cut in [3, 5, 20, 44] {
        let err = parse_codestream(&full[..cut]).unwrap_err();
        assert!(
            matches!(
                err,
                J2kError::Truncated { .. } | J2kError::BadLength { marker: SIZ, .. }
            ),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let full = build(&Spec::default());
    // Without EOC, a stream cut exactly after its last tile-part is accepted (see below).
    for cut in 0..full.len() - 2 {
        assert!(parse_codestream(&full[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn zero_image_size_is_refused() {
    for (size, offset) in [((0, 48), (0, 0)), ((64, 48), (64, 0)), ((64, 48), (0, 50))] {
        let spec = Spec {
            size,
            offset,
            ..Spec::default()
        };
        let err = parse_codestream(&build(&spec)).unwrap_err();
        assert!(
            matches!(err, J2kError::Size(ref m) if m.contains("empty image area")),
            "{err}"
        );
    }
    let spec = Spec {
        tile: (0, 48),
        ..Spec::default()
    };
    let err = parse_codestream(&build(&spec)).unwrap_err();
    assert!(err.to_string().contains("zero tile size"), "{err}");
}

#[test]
fn tile_index_outside_the_grid_is_refused() {
    let spec = Spec {
        tile_parts: vec![(0, None), (1, None)],
        ..Spec::default()
    };
    let err = parse_codestream(&build(&spec)).unwrap_err();
    assert!(
        matches!(
            err,
            J2kError::TileIndex {
                index: 1,
                tiles: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn tile_part_length_past_the_end_is_refused() {
    let spec = Spec {
        tile_parts: vec![(0, Some(5000))],
        ..Spec::default()
    };
    let err = parse_codestream(&build(&spec)).unwrap_err();
    assert!(err.to_string().contains("Psot 5000 runs past"), "{err}");
    let spec = Spec {
        tile_parts: vec![(0, Some(9))],
        ..Spec::default()
    };
    assert!(parse_codestream(&build(&spec)).is_err());
}

#[test]
fn psot_zero_runs_to_eoc() {
    let spec = Spec {
        tile_parts: vec![(0, Some(0))],
        ..Spec::default()
    };
    let mut stream = build(&spec);
    assert_eq!(parse_codestream(&stream).unwrap().tile_parts, 1);
    stream.extend([0, 0]); // even-length padding of an encapsulated fragment
    assert_eq!(parse_codestream(&stream).unwrap().tile_parts, 1);
}

#[test]
fn padding_after_eoc_must_be_zero() {
    let mut stream = build(&Spec::default());
    stream.push(0);
    parse_codestream(&stream).unwrap();
    stream.push(7);
    let err = parse_codestream(&stream).unwrap_err();
    assert!(err.to_string().contains("after EOC"), "{err}");
}

#[test]
fn missing_cod_or_qcd_is_refused() {
    let no_cod = Spec {
        cod: false,
        ..Spec::default()
    };
    assert_eq!(
        parse_codestream(&build(&no_cod)).unwrap_err(),
        J2kError::Missing("COD")
    );
    let no_qcd = Spec {
        qcd: false,
        ..Spec::default()
    };
    assert_eq!(
        parse_codestream(&build(&no_qcd)).unwrap_err(),
        J2kError::Missing("QCD")
    );
}

#[test]
fn siz_length_must_match_csiz() {
    let spec = Spec {
        csiz: Some(3),
        ..Spec::default()
    };
    let err = parse_codestream(&build(&spec)).unwrap_err();
    assert!(err.to_string().contains("does not match Csiz 3"), "{err}");
    let spec = Spec {
        csiz: Some(0),
        components: vec![],
        ..Spec::default()
    };
    assert!(parse_codestream(&build(&spec)).is_err());
}

#[test]
fn bad_coding_parameters_are_refused() {
    let mut stream = build(&Spec::default());
    // The COD body starts after SOC (2) + SIZ (2 + 41) + COD marker and length (4).
    let cod = 2 + 2 + 41 + 4;
    assert_eq!(&stream[cod - 4..cod - 2], &COD.to_be_bytes());
    stream[cod + 6] = 6; // code-block exponents 6 + 4 > 8
    let err = parse_codestream(&stream).unwrap_err();
    assert!(
        err.to_string().contains("code-block exponents 6, 4"),
        "{err}"
    );
    stream[cod + 6] = 4;
    stream[cod + 1] = 9; // progression order
    assert!(err_text(&stream).contains("progression order 9"));
    stream[cod + 1] = 0;
    stream[cod + 5] = 40; // decomposition levels
    assert!(err_text(&stream).contains("40 decomposition levels"));
}

fn err_text(stream: &[u8]) -> String {
    parse_codestream(stream).unwrap_err().to_string()
}

#[test]
fn not_a_codestream_is_refused() {
    assert!(matches!(
        parse_codestream(b"\xFF\xD8\xFF\xE0 a JPEG file").unwrap_err(),
        J2kError::UnexpectedMarker { offset: 0, .. }
    ));
    assert!(matches!(
        parse_codestream(&[]).unwrap_err(),
        J2kError::Truncated { .. }
    ));
}

#[test]
fn mismatch_with_the_dicom_header_is_refused() {
    let info = parse_codestream(&build(&Spec::default())).unwrap();
    let err = check_against(&info, &dicom(64, 64)).unwrap_err();
    assert!(err.to_string().contains("Columns 64 x Rows 64"), "{err}");
    let rgb = DicomImage {
        samples_per_pixel: 3,
        ..dicom(48, 64)
    };
    let err = check_against(&info, &rgb).unwrap_err();
    assert!(err.to_string().contains("SamplesPerPixel is 3"), "{err}");
    let bytes = DicomImage {
        bits_allocated: 8,
        bits_stored: 8,
        ..dicom(48, 64)
    };
    let err = check_against(&info, &bytes).unwrap_err();
    assert!(err.to_string().contains("BitsAllocated is 8"), "{err}");
    // BitsStored 12 with a 16-bit codestream occurs in valid files: accepted.
    let twelve = DicomImage {
        bits_stored: 12,
        ..dicom(48, 64)
    };
    check_against(&info, &twelve).unwrap();
    // Subsampled component.
    let spec = Spec {
        components: vec![(0x0F, 2, 1)],
        ..Spec::default()
    };
    let info = parse_codestream(&build(&spec)).unwrap();
    let err = check_against(&info, &dicom(48, 64)).unwrap_err();
    assert!(err.to_string().contains("subsampled 2 x 1"), "{err}");
}

#[test]
fn jp2_wrapper_yields_its_codestream() {
    let stream = build(&Spec::default());
    let mut jp2 = JP2_SIGNATURE.to_vec();
    jp2.extend(b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 ");
    jp2.extend(((stream.len() + 8) as u32).to_be_bytes());
    jp2.extend(b"jp2c");
    jp2.extend(&stream);
    assert_eq!(codestream_of(&jp2).unwrap(), &stream[..]);
    assert!(codestream_of(&jp2[..jp2.len() - 1]).is_err());
    assert!(codestream_of(&jp2[..40]).is_err());
}

#[test]
fn stored_values_undo_the_level_shift_of_signed_components() {
    let signed = Component {
        precision: 16,
        signed: true,
        dx: 1,
        dy: 1,
    };
    // The decoder returns v + 2^15 for signed components.
    assert_eq!(
        to_stored(&[0.0, 32768.0, 32895.0, 65535.0, 70000.0], signed),
        vec![-32768.0, 0.0, 127.0, 32767.0, 32767.0]
    );
    let unsigned = Component {
        signed: false,
        precision: 12,
        ..signed
    };
    assert_eq!(
        to_stored(&[-3.0, 0.4, 2047.6, 5000.0], unsigned),
        vec![0.0, 0.0, 2048.0, 4095.0]
    );
}

#[test]
fn oversized_frame_is_refused_before_decoding() {
    let err = decode_frame(
        Path::new("big.dcm"),
        0,
        &build(&Spec::default()),
        &dicom(10_000, 10_000),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("big.dcm") && err.contains("frame 0"), "{err}");
}
