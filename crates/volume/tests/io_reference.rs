//! Our NIfTI and DICOM readers against independent readers (nibabel, pydicom, SimpleITK 5.4).
//!
//! `data/golden.json` and the files beside it are made by `tools/golden/volume_io.py` (see
//! `data/README.md` for where each file comes from). Geometry must match SimpleITK's to 1e-5,
//! voxels nibabel's / pydicom's exactly (integer data) or to float32 rounding (scaled data).

use serde_json::Value;
use std::path::{Path, PathBuf};
use volume::io::{dicom, nifti};
use volume::Volume;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(data_dir().join("golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn assert_geometry(what: &str, v: &Volume, case: &Value) {
    let g = &v.geometry;
    for i in 0..3 {
        assert!(
            (g.spacing[i] - f(&case["spacing"][i])).abs() < 1e-5,
            "{what}: spacing {:?} vs {}",
            g.spacing,
            case["spacing"]
        );
        assert!(
            (g.origin[i] - f(&case["origin"][i])).abs() < 1e-5,
            "{what}: origin {:?} vs {}",
            g.origin,
            case["origin"]
        );
        for c in 0..3 {
            assert!(
                (g.direction[i][c] - f(&case["direction"][i][c])).abs() < 1e-5,
                "{what}: direction {:?} vs {}",
                g.direction,
                case["direction"]
            );
        }
    }
}

/// Shape, min, max, sum and probe voxels. `rel` is the tolerance relative to a value's size.
fn assert_voxels(what: &str, v: &Volume, case: &Value, rel: f64) {
    let shape: Vec<usize> = case["shape_zyx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(v.shape_zyx().to_vec(), shape, "{what}: shape");
    let close = |a: f64, b: f64| (a - b).abs() <= rel * b.abs().max(1.0);
    let (lo, hi) = v.value_range().unwrap();
    assert!(
        close(lo as f64, f(&case["min"])),
        "{what}: min {lo} vs {}",
        case["min"]
    );
    assert!(
        close(hi as f64, f(&case["max"])),
        "{what}: max {hi} vs {}",
        case["max"]
    );
    let sum: f64 = v.data.iter().map(|&x| x as f64).sum();
    let n = v.data.len() as f64;
    assert!(
        (sum - f(&case["sum"])).abs()
            <= rel * n * f(&case["max"]).abs().max(f(&case["min"]).abs()).max(1.0),
        "{what}: sum {sum} vs {}",
        case["sum"]
    );
    for p in case["probes"].as_array().unwrap() {
        let idx = [0, 1, 2].map(|i| p[i].as_u64().unwrap() as usize);
        let got = v.data[idx] as f64;
        assert!(
            close(got, f(&p[3])),
            "{what}: voxel {idx:?} = {got}, expected {}",
            p[3]
        );
    }
}

#[test]
fn nifti_files_match_nibabel_and_simpleitk() {
    let g = golden();
    let cases = g["nifti"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let img = nifti::read_nifti_file(&data_dir().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_geometry(file, &img.volume, case);
        // Integer files without scaling are exact; scaled or float files to float32 precision.
        let dt = case["datatype"].as_str().unwrap();
        let h = &img.header;
        let unscaled = h.scl_slope == 0.0 || (h.scl_slope == 1.0 && h.scl_inter == 0.0);
        let exact = unscaled && !dt.contains('f');
        assert_voxels(file, &img.volume, case, if exact { 0.0 } else { 1e-6 });
    }
}

#[test]
fn nifti2_and_4d_files_are_refused_clearly() {
    let g = golden();
    for case in g["nifti_rejected"].as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let err = nifti::read_nifti(&data_dir().join(file))
            .unwrap_err()
            .to_string();
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name), "{err}");
        assert!(err.contains(case["contains"].as_str().unwrap()), "{err}");
    }
}

#[test]
fn dicom_series_matches_simpleitk() {
    let g = golden();
    let case = &g["dicom_series"];
    let dir = data_dir().join(case["dir"].as_str().unwrap());
    let s = dicom::read_series(&dir, None).unwrap();
    assert_eq!(s.series_uid, case["series_uid"].as_str().unwrap());
    assert_geometry("ct_series", &s.volume, case);
    assert_voxels("ct_series", &s.volume, case, 0.0);
    // The localizer, the other series and the text file were left out, each with a reason.
    let dropped: Vec<String> = s
        .dropped
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for name in ["LOCALIZER.dcm", "notes.txt"] {
        assert!(
            dropped.iter().any(|d| d == name),
            "{name} not in {dropped:?}"
        );
    }
    assert!(s.max_spacing_deviation < 1e-3);

    // Both series are listed, the CT first; the other can be chosen by UID.
    let list = dicom::list_series(&dir).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].uid, s.series_uid);
    assert_eq!(list[0].files, 6);
    let other = case["other_series"].as_str().unwrap();
    let mr = dicom::read_series(&dir, Some(other)).unwrap();
    assert_eq!(mr.volume.shape_zyx(), [1, 64, 64]);
    let err = dicom::read_series(&dir, Some("1.2.3"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1.2.3") && err.contains(other), "{err}");
}

#[test]
fn single_dicom_files_match_pydicom_and_simpleitk_including_compressed() {
    let g = golden();
    for case in g["dicom_single"].as_array().unwrap() {
        let d = case["dir"].as_str().unwrap();
        assert!(case["sitk_matches_pydicom"].as_bool().unwrap());
        let s =
            dicom::read_series(&data_dir().join(d), None).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert_eq!(
            s.summary.transfer_syntax,
            case["transfer_syntax"].as_str().unwrap()
        );
        assert_geometry(d, &s.volume, case);
        assert_voxels(d, &s.volume, case, 0.0);
    }
}

#[test]
fn undecodable_transfer_syntax_is_named() {
    let g = golden();
    for case in g["dicom_unsupported"].as_array().unwrap() {
        let d = case["dir"].as_str().unwrap();
        let err = dicom::read_series(&data_dir().join(d), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(case["contains"].as_str().unwrap()), "{err}");
        assert!(err.contains(".dcm"), "names the file: {err}");
    }
}
