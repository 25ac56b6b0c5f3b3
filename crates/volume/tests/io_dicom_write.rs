//! A volume written as a DICOM series reads back with the same geometry and voxels.

use ndarray::Array3;
use std::path::Path;
use volume::io::dicom::{read_series, write_series, SeriesInfo};
use volume::{Geometry, Volume};

#[test]
fn written_series_reads_back_exactly_and_keeps_the_reference_study() {
    let (s, c) = (0.25f64.sin(), 0.25f64.cos());
    let g = Geometry {
        spacing: [0.7, 0.75, 1.25],
        origin: [-120.5, 33.0, -200.25],
        direction: [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]],
    };
    let data = Array3::from_shape_fn((4, 6, 5), |(z, y, x)| {
        (z * 300 + y * 20 + x) as f32 - 1024.0
    });
    let v = Volume::new(data, g).unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("series");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom/CT_small");
    write_series(
        &out,
        &v,
        Some(&reference),
        &SeriesInfo::described("synthetic CTPA"),
    )
    .unwrap();
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4);
    let back = read_series(&out, None).unwrap();
    assert_eq!(back.volume.data, v.data);
    assert!(
        back.volume.geometry.approx_eq(&g, 1e-5),
        "{:?}",
        back.volume.geometry
    );
    assert_eq!(back.summary.description, "synthetic CTPA");
    assert_eq!(back.summary.modality, "CT");

    // Study and patient come from the reference; the series is new.
    let r = read_series(&reference, None).unwrap();
    assert_ne!(r.series_uid, back.series_uid);
    let study = |p: &Path| volume::io::dicom::scan::read_header(p).unwrap().study_uid;
    let first_out = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(study(&first_out), study(&reference.join("CT_small.dcm")));

    // Non-integer values: rounded to int16 steps, within half a step.
    let v2 = Volume::new(v.data.mapv(|x| x * 30.3), g).unwrap();
    let out2 = d.path().join("wide");
    write_series(&out2, &v2, None, &SeriesInfo::described("wide")).unwrap();
    let back2 = read_series(&out2, None).unwrap().volume;
    let step = ((v2.value_range().unwrap().1 - v2.value_range().unwrap().0) / 65535.0).max(1.0);
    for (a, b) in back2.data.iter().zip(v2.data.iter()) {
        assert!((a - b).abs() <= step * 0.5 + 1e-3, "{a} vs {b}");
    }
    // An existing non-empty folder is never overwritten.
    assert!(write_series(&out2, &v2, None, &SeriesInfo::described("again")).is_err());
}
