//! A series written with a reference says what it is and where it comes from (#15 item 3):
//! ImageType DERIVED\SECONDARY\AXIAL, the SeriesDescription and DerivationDescription given,
//! each slice's SourceImageSequence naming the reference image at its position, a
//! ReferencedSeriesSequence naming the reference series, and the reference's study unless a
//! new one is asked for. The expected UIDs and positions are pydicom's reading of the
//! reference (`tools/golden/provenance_pydicom.py` -> tests/data/provenance.json).

use dicom_dictionary_std::tags;
use dicom_object::{open_file, InMemDicomObject};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use volume::io::dicom::{read_series, write_series, SeriesInfo};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn golden() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data().join("provenance.json")).unwrap()).unwrap()
}

fn text(obj: &InMemDicomObject, tag: dicom_object::Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

fn write(info: &SeriesInfo) -> (tempfile::TempDir, PathBuf) {
    let reference = data().join("dicom/ct_series");
    let v = read_series(&reference, None).unwrap().volume;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synthetic");
    write_series(&out, &v, Some(&reference), info).unwrap();
    (tmp, out)
}

#[test]
fn each_slice_references_its_source_image_and_series() {
    let g = golden();
    let info = SeriesInfo {
        description: "SYNTHETIC CTPA (test)".into(),
        derivation: Some("made by ncct2ctpa's provenance test".into()),
        new_study: false,
    };
    let (_tmp, out) = write(&info);
    let sources = g["sources_by_position"].as_array().unwrap();
    let mut referenced = BTreeSet::new();
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), sources.len());
    for f in &files {
        let obj = open_file(f).unwrap().into_inner();
        assert_eq!(text(&obj, tags::IMAGE_TYPE), "DERIVED\\SECONDARY\\AXIAL");
        let description = text(&obj, tags::SERIES_DESCRIPTION);
        assert!(
            description.starts_with(g["series_description_prefix"].as_str().unwrap()),
            "{description}"
        );
        assert_eq!(
            text(&obj, tags::DERIVATION_DESCRIPTION),
            "made by ncct2ctpa's provenance test"
        );
        assert_eq!(
            text(&obj, tags::STUDY_INSTANCE_UID),
            g["study_instance_uid"]
        );
        // the source image: the reference image pydicom places nearest this slice
        let pos: Vec<f64> = obj
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        let d2 = |s: &serde_json::Value| {
            let p = s["position"].as_array().unwrap();
            (0..3)
                .map(|i| (p[i].as_f64().unwrap() - pos[i]).powi(2))
                .sum::<f64>()
        };
        let want = sources
            .iter()
            .min_by(|a, b| d2(a).total_cmp(&d2(b)))
            .unwrap();
        assert!(
            d2(want) < 1e-6,
            "the slice lies on a reference image's position"
        );
        let item = &obj
            .element(tags::SOURCE_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(
            text(item, tags::REFERENCED_SOP_INSTANCE_UID),
            want["sop_instance_uid"]
        );
        assert_eq!(
            text(item, tags::REFERENCED_SOP_CLASS_UID),
            want["sop_class_uid"]
        );
        referenced.insert(text(item, tags::REFERENCED_SOP_INSTANCE_UID));
        let series = &obj
            .element(tags::REFERENCED_SERIES_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(
            text(series, tags::SERIES_INSTANCE_UID),
            g["series_instance_uid"]
        );
        let inst = &series
            .element(tags::REFERENCED_INSTANCE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(
            text(inst, tags::REFERENCED_SOP_INSTANCE_UID),
            want["sop_instance_uid"]
        );
        // a new series of its own
        assert_ne!(
            text(&obj, tags::SERIES_INSTANCE_UID),
            g["series_instance_uid"]
        );
    }
    assert_eq!(referenced.len(), sources.len(), "every source image once");
}

#[test]
fn a_new_study_only_when_asked_and_long_texts_are_cut_to_their_vr() {
    let g = golden();
    let info = SeriesInfo {
        description: format!("SYNTHETIC {}", "x".repeat(100)),
        derivation: None,
        new_study: true,
    };
    let (_tmp, out) = write(&info);
    let first = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let obj = open_file(first).unwrap().into_inner();
    let study = text(&obj, tags::STUDY_INSTANCE_UID);
    assert_ne!(study, g["study_instance_uid"]);
    assert!(study.starts_with("2.25."), "{study}");
    assert_eq!(
        text(&obj, tags::SERIES_DESCRIPTION).len(),
        64,
        "LO holds 64 characters"
    );
    assert!(obj.element(tags::DERIVATION_DESCRIPTION).is_err());
    // patient fields still come from the reference
    let reference = data().join("dicom/ct_series");
    let src = volume::io::dicom::read_series(&reference, None).unwrap();
    assert_eq!(src.summary.modality, "CT");
    assert!(obj.element(tags::PATIENT_ID).is_ok());
}
