//! Choosing the series of a CTPA export folder (#15 item 2): a scout, a bolus-tracking series
//! (images at one table position), soft-tissue and lung reconstructions and a thick one. The
//! folder is written with our DICOM writer, then the headers the choice reads (ImageType,
//! positions, ConvolutionKernel, SliceThickness) are set with dicom-rs as a scanner sets them.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::open_file;
use ndarray::Array3;
use std::path::Path;
use volume::io::dicom::{
    read_series_selected, write_series, SeriesInfo, SeriesRule, SeriesSelection,
};
use volume::{Geometry, Volume};

/// Writes a `slices`-slice series with `spacing` mm slices into `folder` (files prefixed
/// `name`), then rewrites its headers with `edit`.
fn series(
    folder: &Path,
    name: &str,
    slices: usize,
    spacing: f64,
    edit: impl Fn(&mut dicom_object::DefaultDicomObject, usize),
) {
    let tmp = tempfile::tempdir().unwrap();
    let g = Geometry::identity([0.7, 0.7, spacing]);
    let v = Volume::new(Array3::from_elem((slices, 8, 8), 40.0f32), g).unwrap();
    let out = tmp.path().join("s");
    write_series(&out, &v, None, &SeriesInfo::described(name)).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for (k, f) in files.iter().enumerate() {
        let mut obj = open_file(f).unwrap();
        obj.put_str(tags::SLICE_THICKNESS, VR::DS, format!("{spacing}"));
        edit(&mut obj, k);
        obj.write_to_file(folder.join(format!("{name}-{k}.dcm")))
            .unwrap();
    }
}

fn export_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kernel = |k: &'static str| {
        move |o: &mut dicom_object::DefaultDicomObject, _: usize| {
            o.put_str(tags::CONVOLUTION_KERNEL, VR::SH, k);
        }
    };
    series(d, "CTPA 0.8 B30f", 12, 0.8, kernel("B30f"));
    series(d, "Lung 1.0 B70f", 12, 1.0, kernel("B70f"));
    series(d, "CTPA 3.0 B30f", 4, 3.0, kernel("B30f"));
    series(d, "Topogram", 1, 1.0, |o, _| {
        o.put_str(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\LOCALIZER");
    });
    // bolus tracking: 20 images, all at the first one's table position
    series(d, "Bolus tracking", 20, 1.0, |o, _| {
        o.put_str(tags::IMAGE_POSITION_PATIENT, VR::DS, "0\\0\\0");
    });
    dir
}

fn read(dir: &Path, rule: SeriesRule) -> Result<volume::io::dicom::DicomSeries, String> {
    read_series_selected(dir, &SeriesSelection::Rule(rule)).map_err(|e| e.to_string())
}

#[test]
fn the_rule_picks_the_series_and_says_why() {
    let dir = export_folder();
    let d = dir.path();
    // no rule: the most slice positions, then the thinner slices; never scout or bolus
    let s = read(d, SeriesRule::default()).unwrap();
    assert_eq!(s.summary.description, "CTPA 0.8 B30f");
    assert_eq!(s.volume.shape_zyx()[0], 12);
    let c = s.choice.unwrap();
    assert!(
        c.reason.contains("12 slices") && c.reason.contains("B30f"),
        "{}",
        c.reason
    );
    let why = |desc_uid: &str| {
        c.passed_over
            .iter()
            .find(|(u, _)| u == desc_uid)
            .map(|(_, w)| w.clone())
            .unwrap()
    };
    let uid_of = |desc: &str| {
        volume::io::dicom::list_series(d)
            .unwrap()
            .into_iter()
            .find(|s| s.description == desc)
            .unwrap()
            .uid
            .clone()
    };
    assert!(why(&uid_of("Topogram")).contains("localizer"));
    assert!(why(&uid_of("Bolus tracking")).contains("single table position"));

    let by_desc = SeriesRule {
        description: Some("lung".into()),
        ..Default::default()
    };
    assert_eq!(
        read(d, by_desc).unwrap().summary.description,
        "Lung 1.0 B70f"
    );
    let thick = SeriesRule {
        kernel: Some("^b3".into()),
        thickness_mm: Some([2.5, 3.5]),
        ..Default::default()
    };
    let s = read(d, thick).unwrap();
    assert_eq!(s.summary.description, "CTPA 3.0 B30f");
    assert!(s
        .choice
        .unwrap()
        .reason
        .contains("kernel /^b3/, thickness 2.5..3.5 mm"));
}

#[test]
fn a_rule_nothing_meets_is_an_error_listing_every_series() {
    let dir = export_folder();
    let e = read(
        dir.path(),
        SeriesRule {
            description: Some("angio".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    for what in [
        "no series to read (description /angio/)",
        "localizer",
        "single table position",
        "does not match /angio/",
    ] {
        assert!(e.contains(what), "{what}: {e}");
    }
    let bad = read(
        dir.path(),
        SeriesRule {
            kernel: Some("(".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(bad.contains("series kernel pattern"), "{bad}");
}
