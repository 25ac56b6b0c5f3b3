//! NIfTI round trips, determinism and the ITK header layout of what we write.

use ndarray::Array3;
use std::path::Path;
use volume::io::nifti::{
    read_nifti, read_nifti_displacement, read_nifti_file, write_nifti, write_nifti_displacement,
    write_nifti_mask, TransformSource,
};
use volume::{Geometry, Volume};

fn oblique() -> Geometry {
    let (s, c) = (0.3f64.sin(), 0.3f64.cos());
    Geometry {
        spacing: [0.7, 0.8, 2.5],
        origin: [-100.25, 20.5, 35.0],
        // Improper (det -1) on purpose: exercises qfac = -1.
        direction: [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, -1.0]],
    }
}

fn ramp(nz: usize, ny: usize, nx: usize) -> Array3<f32> {
    Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
        (z * 1000 + y * 37 + x) as f32 * 0.5 - 1024.0
    })
}

#[test]
fn float_volume_round_trips_exactly_through_nii_and_nii_gz() {
    let d = tempfile::tempdir().unwrap();
    let v = Volume::new(ramp(4, 5, 6), oblique()).unwrap();
    for name in ["a.nii", "a.nii.gz"] {
        let p = d.path().join(name);
        write_nifti(&p, &v).unwrap();
        let img = read_nifti_file(&p).unwrap();
        assert_eq!(img.volume.data, v.data, "{name}");
        assert!(
            img.volume.geometry.approx_eq(&v.geometry, 1e-5),
            "{name}: {:?}",
            img.volume.geometry
        );
        assert_eq!(img.transform, TransformSource::Sform);
        assert_eq!(img.header.qform_code, 1);
        assert_eq!(img.header.sform_code, 1);
        assert_eq!(img.header.pixdim[0], -1.0, "qfac of an improper direction");
    }
}

#[test]
fn mask_is_written_as_uint8() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.nii.gz");
    let data = Array3::from_shape_fn((3, 4, 5), |(z, y, x)| u8::from((z + y + x) % 3 == 0));
    let m = Volume::new(data.clone(), oblique()).unwrap();
    write_nifti_mask(&p, &m).unwrap();
    let img = read_nifti_file(&p).unwrap();
    assert_eq!(img.header.datatype.name(), "uint8");
    assert_eq!(img.volume.data.mapv(|v| v as u8), data);
    let back = volume::io::read_mask(&p).unwrap();
    assert_eq!(back.data, data);
}

#[test]
fn gzip_output_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let v = Volume::new(ramp(3, 4, 5), oblique()).unwrap();
    let (p1, p2) = (d.path().join("x.nii.gz"), d.path().join("y.nii.gz"));
    write_nifti(&p1, &v).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write_nifti(&p2, &v).unwrap();
    assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
    // And the gzip header carries no timestamp (bytes 4..8 are MTIME).
    assert_eq!(&std::fs::read(&p1).unwrap()[4..8], &[0, 0, 0, 0]);
}

#[test]
fn displacement_field_round_trips_in_lps() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dvf.nii.gz");
    let g = oblique();
    let f = [ramp(2, 3, 4), ramp(2, 3, 4) * 2.0, ramp(2, 3, 4) * -0.5];
    write_nifti_displacement(&p, &g, &f).unwrap();
    let (g2, f2) = read_nifti_displacement(&p).unwrap();
    assert!(g2.approx_eq(&g, 1e-5));
    assert_eq!(f2, f);
    // It is not a 3D volume: the volume reader refuses it clearly.
    let err = read_nifti(&p).unwrap_err().to_string();
    assert!(
        err.contains("dvf.nii.gz") && err.contains("only 3D"),
        "{err}"
    );
}

#[test]
fn bad_output_name_is_refused() {
    let v = Volume::new(ramp(1, 1, 1), Geometry::default()).unwrap();
    let err = write_nifti(Path::new("/tmp/out.txt"), &v).unwrap_err();
    assert!(err.to_string().contains("out.txt"));
}
