//! The slice store: write a case, read slices and volumes back exactly; `open` refuses
//! truncated stores, other format versions and unfinished manifests, naming the file.

use dataset::manifest::{
    AlignMode, CaseEntry, CaseMeta, CaseSettings, GridRecord, IntensityWindow, Manifest,
    ManifestStatus, MaskRecord, MaskSource, SourceRecord, SpacingMode, Split, SplitSpec, FORMAT,
    FORMAT_VERSION, MANIFEST_FILE, TOOL_VERSION,
};
use dataset::raw::SourceKind;
use dataset::store::{
    hu_to_i16, write_case, CaseArrays, PreparedDataset, StoreError, CTPA_FILE, LUNG_FILE, NCCT_FILE,
};
use ndarray::Array3;
use std::path::{Path, PathBuf};
use volume::Geometry;

const SHAPE: (usize, usize, usize) = (5, 6, 7); // [z, y, x]

fn geometry() -> Geometry {
    let mut g = Geometry::identity([0.8, 0.9, 2.5]);
    g.origin = [-10.0, 20.0, -30.0];
    g
}

fn source(name: &str) -> SourceRecord {
    SourceRecord {
        path: PathBuf::from(name),
        kind: SourceKind::Nifti,
        sha256: "0".repeat(64),
    }
}

fn meta(case: &str) -> CaseMeta {
    let grid = GridRecord {
        shape_zyx: [SHAPE.0, SHAPE.1, SHAPE.2],
        geometry: geometry(),
    };
    CaseMeta {
        case: case.to_owned(),
        tool_version: TOOL_VERSION.to_owned(),
        settings: CaseSettings {
            spacing: SpacingMode::Auto,
            align: AlignMode::None,
            ..CaseSettings::default()
        },
        ncct: source("ncct.nii.gz"),
        ctpa: source("ctpa.nii.gz"),
        lung: None,
        ncct_grid: grid,
        ctpa_grid: grid,
        grid,
        alignment: None,
        masks: MaskRecord {
            body_ml: 1.0,
            lung_ml: 0.5,
            lung_source: MaskSource::Computed,
        },
        ncct_hu_range: [-1024.0, 1000.0],
        ctpa_hu_range: [-1024.0, 1000.0],
        ncct_series: None,
        ctpa_series: None,
    }
}

struct Arrays {
    ncct: Array3<f32>,
    ctpa: Array3<f32>,
    body: Array3<u8>,
    lung: Array3<u8>,
}

/// Distinct values everywhere, covering the full i16 HU range and fractional HU.
fn arrays(seed: f32) -> Arrays {
    Arrays {
        ncct: Array3::from_shape_fn(SHAPE, |(z, y, x)| {
            -1024.0 + seed + (z * 100 + y * 10 + x) as f32 * 7.3
        }),
        ctpa: Array3::from_shape_fn(SHAPE, |(z, y, x)| {
            if (z, y, x) == (0, 0, 0) {
                40000.0 // saturates to i16::MAX
            } else {
                300.0 + seed - (z * 100 + y * 10 + x) as f32 * 3.1
            }
        }),
        body: Array3::from_shape_fn(SHAPE, |(z, y, x)| u8::from((z + y + x) % 2 == 0)),
        lung: Array3::from_shape_fn(SHAPE, |(z, y, x)| u8::from((z * y + x) % 3 == 0)),
    }
}

fn write_dataset(root: &Path, cases: &[(&str, Split, f32)]) -> Vec<Arrays> {
    let mut out = Vec::new();
    let mut entries = Vec::new();
    for &(name, split, seed) in cases {
        let a = arrays(seed);
        let m = meta(name);
        let dir = write_case(
            root,
            &m,
            CaseArrays {
                ncct: &a.ncct,
                ctpa: &a.ctpa,
                body: &a.body,
                lung: &a.lung,
            },
        )
        .unwrap();
        assert_eq!(dir, root.join("cases").join(name));
        entries.push(CaseEntry {
            split,
            dir: PathBuf::from("cases").join(name),
            meta: m,
        });
        out.push(a);
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        tool_version: TOOL_VERSION.to_owned(),
        status: ManifestStatus::Complete,
        raw_dir: PathBuf::from("raw"),
        window: IntensityWindow::default(),
        settings: CaseSettings::default(),
        split: SplitSpec::File {
            path: PathBuf::from("split.json"),
        },
        cases: entries,
        skipped: Vec::new(),
    };
    std::fs::write(
        root.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    out
}

#[test]
fn slices_and_volumes_read_back_exactly() {
    let t = tempfile::tempdir().unwrap();
    let written = write_dataset(
        t.path(),
        &[("p1", Split::Train, 0.0), ("p2", Split::Val, 0.4)],
    );
    let ds = PreparedDataset::open(t.path()).unwrap();
    assert_eq!(ds.cases(Split::Train).len(), 1);
    assert_eq!(ds.cases(Split::Val)[0].name(), "p2");
    assert!(ds.cases(Split::Test).is_empty());

    for (name, a) in ["p1", "p2"].iter().zip(&written) {
        for z in 0..SHAPE.0 {
            let s = ds.slice(name, z).unwrap();
            assert_eq!(s.dim(), (SHAPE.1, SHAPE.2));
            for y in 0..SHAPE.1 {
                for x in 0..SHAPE.2 {
                    assert_eq!(s.ncct[[y, x]], hu_to_i16(a.ncct[[z, y, x]]));
                    assert_eq!(s.ctpa[[y, x]], hu_to_i16(a.ctpa[[z, y, x]]));
                    assert_eq!(s.body[[y, x]], a.body[[z, y, x]]);
                    assert_eq!(s.lung[[y, x]], a.lung[[z, y, x]]);
                    // Rounding to whole HU is the only loss.
                    if (z, y, x) != (0, 0, 0) {
                        assert!((s.ctpa[[y, x]] as f32 - a.ctpa[[z, y, x]]).abs() <= 0.5);
                    }
                }
            }
            let f = s.normalized();
            let w = IntensityWindow::default();
            assert_eq!(f.ncct[[1, 2]], w.normalize(s.ncct[[1, 2]] as f32));
            assert!(f
                .ncct
                .iter()
                .chain(f.ctpa.iter())
                .all(|v| (-1.0..=1.0).contains(v)));
            assert_eq!(f.lung[[0, 0]], a.lung[[z, 0, 0]] as f32);
        }
    }
    assert_eq!(ds.slice("p1", 0).unwrap().ctpa[[0, 0]], i16::MAX);

    let v = ds.volume("p2").unwrap();
    assert_eq!(v.ncct.geometry, geometry());
    assert_eq!(v.ncct.shape_zyx(), [SHAPE.0, SHAPE.1, SHAPE.2]);
    assert_eq!(
        v.ncct.data[[3, 4, 5]],
        hu_to_i16(written[1].ncct[[3, 4, 5]]) as f32
    );
    assert_eq!(v.lung.data, written[1].lung);
    assert_eq!(v.body.data, written[1].body);

    // Out of range and unknown cases are errors, not panics.
    assert!(matches!(
        ds.slice("p1", SHAPE.0),
        Err(StoreError::SliceOutOfRange { .. })
    ));
    assert!(matches!(
        ds.slice("nope", 0),
        Err(StoreError::UnknownCase(_))
    ));
}

#[test]
fn rewriting_a_case_replaces_it_whole() {
    let t = tempfile::tempdir().unwrap();
    write_dataset(t.path(), &[("p1", Split::Train, 0.0)]);
    let again = write_dataset(t.path(), &[("p1", Split::Train, 5.0)]);
    let ds = PreparedDataset::open(t.path()).unwrap();
    assert_eq!(
        ds.slice("p1", 2).unwrap().ncct[[0, 0]],
        hu_to_i16(again[0].ncct[[2, 0, 0]])
    );
    // No temporaries or moved-aside folders left behind.
    let names: Vec<String> = std::fs::read_dir(t.path().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["p1"]);
}

#[test]
fn open_rejects_a_truncated_store_naming_the_file() {
    let t = tempfile::tempdir().unwrap();
    write_dataset(t.path(), &[("p1", Split::Train, 0.0)]);
    let file = t.path().join("cases/p1").join(CTPA_FILE);
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len - 2).unwrap();
    let e = PreparedDataset::open(t.path()).unwrap_err();
    assert!(matches!(e, StoreError::Length { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&file.display().to_string()) && msg.contains("truncated"),
        "{msg}"
    );

    // A missing file likewise.
    std::fs::remove_file(t.path().join("cases/p1").join(LUNG_FILE)).unwrap();
    f.set_len(len).unwrap();
    let e = PreparedDataset::open(t.path()).unwrap_err().to_string();
    assert!(e.contains(LUNG_FILE), "{e}");
    let _ = NCCT_FILE;
}

fn edit_manifest(root: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = root.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn open_rejects_other_versions_unfinished_and_escaping_manifests() {
    let t = tempfile::tempdir().unwrap();
    write_dataset(t.path(), &[("p1", Split::Train, 0.0)]);
    let manifest = t.path().join(MANIFEST_FILE).display().to_string();

    edit_manifest(t.path(), |v| {
        v["format_version"] = (FORMAT_VERSION + 1).into()
    });
    let e = PreparedDataset::open(t.path()).unwrap_err();
    assert!(matches!(e, StoreError::Version { .. }), "{e}");
    assert!(e.to_string().contains(&manifest), "{e}");

    edit_manifest(t.path(), |v| {
        v["format_version"] = FORMAT_VERSION.into();
        v["status"] = "in_progress".into();
    });
    let e = PreparedDataset::open(t.path()).unwrap_err();
    assert!(matches!(e, StoreError::Incomplete { .. }), "{e}");

    edit_manifest(t.path(), |v| {
        v["status"] = "complete".into();
        v["cases"][0]["dir"] = "../../etc".into();
    });
    let e = PreparedDataset::open(t.path()).unwrap_err().to_string();
    assert!(e.contains("relative path"), "{e}");

    std::fs::write(t.path().join(MANIFEST_FILE), b"{ not json").unwrap();
    let e = PreparedDataset::open(t.path()).unwrap_err().to_string();
    assert!(e.contains(&manifest), "{e}");

    let e = PreparedDataset::open(&t.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
}

/// #13 item 7: a bit flip, or random bytes of the right size, in a store file is caught on
/// the read of the slice that holds it (per-slice CRC-32 in `checksums.json`), naming the file
/// and the slice; the other slices still read.
#[test]
fn a_damaged_slice_is_caught_when_it_is_read() {
    let t = tempfile::tempdir().unwrap();
    write_dataset(t.path(), &[("p1", Split::Train, 0.0)]);
    let dir = t.path().join("cases/p1");
    let sums: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("checksums.json")).unwrap()).unwrap();
    assert_eq!(sums["ctpa"].as_array().unwrap().len(), SHAPE.0);

    let file = dir.join(CTPA_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let plane = 2 * SHAPE.1 * SHAPE.2;
    bytes[plane + 7] ^= 0x10; // one bit in slice 1
    std::fs::write(&file, &bytes).unwrap();
    let ds = PreparedDataset::open(t.path()).unwrap();
    assert!(ds.slice_at(0, 0).is_ok());
    let e = ds.slice_at(0, 1).unwrap_err();
    assert!(matches!(e, StoreError::Damaged { z: 1, .. }), "{e}");
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    let e = ds.volume("p1").unwrap_err().to_string();
    assert!(e.contains("slice 1") && e.contains("damaged"), "{e}");

    // random bytes of exactly the right size: open accepts the length, the read refuses
    let mut state = 7u32;
    let noise: Vec<u8> = (0..bytes.len())
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        })
        .collect();
    std::fs::write(dir.join(LUNG_FILE), &noise[..SHAPE.0 * SHAPE.1 * SHAPE.2]).unwrap();
    let ds = PreparedDataset::open(t.path()).unwrap();
    assert!(matches!(
        ds.slice_at(0, 0).unwrap_err(),
        StoreError::Damaged { z: 0, .. }
    ));
}

/// A store's `checksums.json` that does not describe its slices is refused at open, naming it.
#[test]
fn a_wrong_checksums_file_is_refused_at_open() {
    let t = tempfile::tempdir().unwrap();
    write_dataset(t.path(), &[("p1", Split::Train, 0.0)]);
    let file = t.path().join("cases/p1/checksums.json");
    std::fs::write(
        &file,
        r#"{"ncct": [1], "ctpa": [1], "body": [1], "lung": [1]}"#,
    )
    .unwrap();
    let e = PreparedDataset::open(t.path()).unwrap_err().to_string();
    assert!(
        e.contains("checksums.json") && e.contains("1 checksums for 5 slices"),
        "{e}"
    );
    std::fs::write(&file, b"garbage").unwrap();
    let e = PreparedDataset::open(t.path()).unwrap_err().to_string();
    assert!(e.contains("checksums.json"), "{e}");
}
