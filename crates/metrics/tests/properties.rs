//! Hand-checkable properties of the metrics (no reference files needed).

use metrics::{
    mae, psnr, ssim_2d, ssim_3d, ssim_3d_masked, ssim_map_2d, MetricsError, SsimMode, SsimParams,
};
use ndarray::{s, Array2, Array3};

/// A deterministic textured image (no RNG dependency).
fn texture(shape: (usize, usize, usize), seed: u32) -> Array3<f32> {
    Array3::from_shape_fn(shape, |(z, y, x)| {
        let h = (z as u32 * 73_856_093) ^ (y as u32 * 19_349_663) ^ (x as u32 * 83_492_791) ^ seed;
        let h = h.wrapping_mul(2_654_435_761) >> 16;
        (h % 2000) as f32 - 1000.0
    })
}

#[test]
fn ssim_of_an_image_with_itself_is_one() {
    let a = texture((12, 20, 17), 1);
    let p = SsimParams::default();
    for mode in [SsimMode::Volume, SsimMode::Axial] {
        let s = ssim_3d(a.view(), a.view(), mode, 4095.0, &p).unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{mode:?}: {s}");
    }
    let s = ssim_2d(
        a.index_axis(ndarray::Axis(0), 3),
        a.index_axis(ndarray::Axis(0), 3),
        4095.0,
        &p,
    )
    .unwrap();
    assert!((s - 1.0).abs() < 1e-12);
}

#[test]
fn ssim_drops_with_noise_and_is_symmetric() {
    let a = texture((1, 32, 32), 1).index_axis_move(ndarray::Axis(0), 0);
    let n = texture((1, 32, 32), 2).index_axis_move(ndarray::Axis(0), 0);
    let p = SsimParams::default();
    let mut last = 1.0;
    for k in [0.05f32, 0.2, 0.8] {
        let b = &a + &(&n * k);
        let s = ssim_2d(a.view(), b.view(), 2000.0, &p).unwrap();
        let t = ssim_2d(b.view(), a.view(), 2000.0, &p).unwrap();
        assert!(s < last, "more noise must lower SSIM: {s} !< {last}");
        assert!((s - t).abs() < 1e-14);
        last = s;
    }
}

#[test]
fn map_has_the_valid_shape() {
    let a = Array2::<f32>::zeros((15, 23));
    let m = ssim_map_2d(a.view(), a.view(), 1.0, &SsimParams::default()).unwrap();
    assert_eq!(m.dim(), (5, 13));
    assert!(m.iter().all(|&v| v == 1.0));
}

#[test]
fn masked_metrics_ignore_voxels_outside_the_mask() {
    let t = texture((12, 30, 30), 3);
    let p = &t + &texture((12, 30, 30), 4).mapv(|v| v * 0.1);
    let mut mask = Array3::<u8>::zeros(t.dim());
    mask.slice_mut(s![.., 5..12, 5..12]).fill(1);
    // Change voxels far from the mask: more than the window radius (5) away from it in y.
    let mut p2 = p.clone();
    p2.slice_mut(s![.., 18.., ..]).fill(3000.0);
    let par = SsimParams::default();
    let m = Some(mask.view());
    assert_eq!(
        mae(p.view(), t.view(), m).unwrap(),
        mae(p2.view(), t.view(), m).unwrap()
    );
    assert_eq!(
        psnr(p.view(), t.view(), m, 4095.0).unwrap(),
        psnr(p2.view(), t.view(), m, 4095.0).unwrap()
    );
    for mode in [SsimMode::Volume, SsimMode::Axial] {
        let a = ssim_3d_masked(p.view(), t.view(), &[mask.view()], mode, 4095.0, &par).unwrap();
        let b = ssim_3d_masked(p2.view(), t.view(), &[mask.view()], mode, 4095.0, &par).unwrap();
        assert_eq!(a.masked, b.masked, "{mode:?}");
        assert!(
            b.whole < a.whole,
            "{mode:?}: the unmasked SSIM does see the change"
        );
    }
    // And MAE without the mask does see it.
    assert!(mae(p2.view(), t.view(), None).unwrap() > mae(p.view(), t.view(), None).unwrap());
}

#[test]
fn a_mask_only_in_the_border_has_no_ssim() {
    let t = texture((12, 20, 20), 5);
    let mut mask = Array3::<u8>::zeros(t.dim());
    mask.slice_mut(s![.., 0..3, ..]).fill(1); // within 5 voxels of the border only
    let s = ssim_3d_masked(
        t.view(),
        t.view(),
        &[mask.view()],
        SsimMode::Axial,
        1.0,
        &SsimParams::default(),
    )
    .unwrap();
    assert_eq!(s.masked, vec![None]);
}

#[test]
fn too_small_inputs_are_refused_like_skimage() {
    let p = SsimParams::default();
    let a = Array3::<f32>::zeros((10, 20, 20)); // 10 slices < 11-slice window
    assert!(matches!(
        ssim_3d(a.view(), a.view(), SsimMode::Volume, 1.0, &p),
        Err(MetricsError::TooSmall { win: 11, .. })
    ));
    // Axial mode filters within slices only: fine.
    assert!(ssim_3d(a.view(), a.view(), SsimMode::Axial, 1.0, &p).is_ok());
    let b = Array2::<f32>::zeros((10, 30));
    assert!(ssim_2d(b.view(), b.view(), 1.0, &p).is_err());
    let c = Array2::<f32>::zeros((11, 30));
    assert!(matches!(
        ssim_2d(c.view(), b.view(), 1.0, &p),
        Err(MetricsError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ssim_2d(c.view(), c.view(), f64::NAN, &p),
        Err(MetricsError::InvalidDataRange(_))
    ));
}
