//! Enhanced (multi-frame) CT in one file reads as the volume of the series it was made from
//! (#15 item 2): `tools/golden/dicom_multiframe.py` built the files with pydicom from
//! tests/data/dicom/ct_series (frames shuffled, orientation and spacing shared, position and
//! rescale per frame; or everything per frame, Legacy Converted Enhanced CT).

use std::path::{Path, PathBuf};
use volume::io::dicom::read_series;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/dicom")
        .join(p)
}

#[test]
fn enhanced_and_legacy_converted_ct_equal_their_source_series() {
    let series = read_series(&data("ct_series"), None).unwrap().volume;
    for file in [
        "multiframe/enhanced_ct.dcm",
        "multiframe/legacy_converted.dcm",
    ] {
        let mf = read_series(&data(file), None).unwrap();
        assert_eq!(mf.volume.data, series.data, "{file}: voxels");
        assert!(
            mf.volume.geometry.approx_eq(&series.geometry, 1e-6),
            "{file}: {:?} vs {:?}",
            mf.volume.geometry,
            series.geometry
        );
        assert!(mf.max_spacing_deviation < 1e-6);
    }
    // the same through the generic reader and in a folder of its own
    let v = volume::io::read_ct(&data("multiframe/enhanced_ct.dcm"), None).unwrap();
    assert_eq!(v.data, series.data);
}

#[test]
fn frames_that_are_not_one_regular_volume_are_refused_naming_the_file() {
    let e = read_series(&data("multiframe/gap.dcm"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gap.dcm"), "{e}");
    assert!(e.contains("spacing") || e.contains("gap"), "{e}");
}

/// A multi-frame file whose NumberOfFrames disagrees with its per-frame groups is refused
/// naming the file and both counts.
#[test]
fn a_frame_count_that_disagrees_with_the_functional_groups_is_refused() {
    use dicom_core::VR;
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.dcm");
    let mut obj = dicom_object::open_file(data("multiframe/enhanced_ct.dcm")).unwrap();
    obj.put_str(dicom_dictionary_std::tags::NUMBER_OF_FRAMES, VR::IS, "4");
    obj.write_to_file(&bad).unwrap();
    let e = read_series(&bad, None).unwrap_err().to_string();
    assert!(e.contains("bad.dcm"), "{e}");
    assert!(
        e.contains("NumberOfFrames is 4") && e.contains("5 items"),
        "{e}"
    );
}
