//! #13 item 8: `predict` never writes over its input, with or without `--force`.

mod common;

use common::ncct2ctpa;
use ndarray::Array3;
use volume::io::nifti::write_nifti;
use volume::{Geometry, Volume};

#[test]
fn the_output_may_never_be_the_input_or_inside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ncct.nii.gz");
    let vol = Volume::new(
        Array3::from_elem((2, 8, 8), -1000.0f32),
        Geometry::identity([1.0, 1.0, 2.0]),
    )
    .unwrap();
    write_nifti(&input, &vol).unwrap();
    let before = std::fs::read(&input).unwrap();
    let folder = tmp.path().join("inputs");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(&input, folder.join("a.nii.gz")).unwrap();
    let model = tmp.path().join("no-model-needed-to-refuse");
    let cases = [
        (input.clone(), input.clone()),
        (folder.clone(), folder.clone()),
        (folder.clone(), folder.join("out")),
        // the same file through another spelling of its path
        (input.clone(), tmp.path().join("inputs/../ncct.nii.gz")),
    ];
    for (inp, out) in cases {
        let o = ncct2ctpa(&[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--input",
            inp.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--force",
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{} -> {}",
            inp.display(),
            out.display()
        );
        assert!(stderr.contains("would overwrite the input"), "{stderr}");
    }
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert!(!folder.join("out").exists());
    let names: Vec<_> = std::fs::read_dir(&folder).unwrap().collect();
    assert_eq!(
        names.len(),
        1,
        "something was written into the input folder"
    );
}
