//! Resampling: exactness on the identity grid, analytic values under a rigid transform, and
//! agreement with SimpleITK (golden file from tools/golden/volume_processing.py).

use ndarray::Array3;
use serde::Deserialize;
use volume::resample::{resample, resample_mask, Grid, Interpolation};
use volume::transform::Rigid3;
use volume::{Geometry, Volume};

fn oblique(spacing: [f64; 3], origin: [f64; 3]) -> Geometry {
    // any proper rotation makes a valid direction
    let d = Rigid3::new([0.0; 3], [0.2, -0.1, 0.3], [0.0; 3]).matrix();
    Geometry {
        spacing,
        origin,
        direction: d,
    }
}

fn random_volume(shape_zyx: (usize, usize, usize), g: Geometry) -> Volume {
    // a fixed LCG: deterministic, no dependency
    let mut s: u64 = 0x2545F4914F6CDD1D;
    let data = Array3::from_shape_simple_fn(shape_zyx, || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f64 / (1u64 << 31) as f64 * 2000.0 - 1000.0) as f32
    });
    Volume::new(data, g).unwrap()
}

#[test]
fn identity_grid_returns_the_same_voxels() {
    let v = random_volume((5, 6, 7), oblique([0.8, 1.1, 2.5], [-30.0, 12.0, 4.0]));
    for interp in [Interpolation::Linear, Interpolation::Nearest] {
        let out = resample(&v, &Grid::of(&v), None, interp, -1024.0).unwrap();
        assert_eq!(out.data, v.data, "{interp:?}");
        assert_eq!(out.geometry, v.geometry);
    }
    let mask = Volume::new(v.data.mapv(|x| u8::from(x > 0.0)), v.geometry).unwrap();
    assert_eq!(resample_mask(&mask, &Grid::of(&mask), None).unwrap(), mask);
}

#[test]
fn rigid_transform_of_a_linear_ramp_is_exact() {
    // I(p) = a·p + b in physical space; trilinear interpolation reproduces it exactly inside.
    let g = oblique([1.5, 1.2, 2.0], [-20.0, -15.0, -10.0]);
    let (a, b) = ([0.7, -1.3, 2.1], 5.0);
    let f = |p: [f64; 3]| a[0] * p[0] + a[1] * p[1] + a[2] * p[2] + b;
    let data = Array3::from_shape_fn((16, 20, 24), |(k, j, i)| {
        f(g.index_to_point([i as f64, j as f64, k as f64])) as f32
    });
    let v = Volume::new(data, g).unwrap();
    let t = Rigid3::from_degrees([0.0, 0.0, 0.0], [5.0, -3.0, 8.0], [2.0, -1.5, 1.0]);
    let out_grid = Grid::of(&v).with_spacing([2.0, 2.0, 2.0]);
    let out = resample(&v, &out_grid, Some(&t), Interpolation::Linear, f32::NAN).unwrap();
    let (mut inside, mut outside) = (0, 0);
    for ((k, j, i), &val) in out.data.indexed_iter() {
        let p = out.geometry.index_to_point([i as f64, j as f64, k as f64]);
        let q = t.apply(p);
        let idx = v.geometry.point_to_index(q);
        let strictly_inside =
            (0..3).all(|ax| idx[ax] >= 0.0 && idx[ax] <= (v.size_xyz()[ax] - 1) as f64);
        let band = (0..3).all(|ax| idx[ax] >= -0.5 && idx[ax] < v.size_xyz()[ax] as f64 - 0.5);
        if strictly_inside {
            inside += 1;
            let want = f(q);
            assert!(
                (f64::from(val) - want).abs() < 1e-3,
                "at {p:?}: {val} vs {want}"
            );
        } else if !band {
            outside += 1;
            assert!(val.is_nan(), "outside the input must be the fill value");
        }
    }
    assert!(
        inside > 500 && outside > 10,
        "inside {inside}, outside {outside}"
    );
}

#[test]
fn resampling_by_a_transform_then_its_inverse_comes_back() {
    // A smooth image moved by T and back by T^-1 matches the original away from the border.
    let g = Geometry::identity([2.0; 3]);
    let data = Array3::from_shape_fn((24, 24, 24), |(k, j, i)| {
        let r2 = (i as f64 - 11.5).powi(2) + (j as f64 - 11.5).powi(2) + (k as f64 - 11.5).powi(2);
        (1000.0 * (-r2 / 40.0).exp()) as f32
    });
    let v = Volume::new(data, g).unwrap();
    let grid = Grid::of(&v);
    let t = Rigid3::from_degrees(grid.center(), [4.0, 0.0, -6.0], [3.0, 1.0, -2.0]);
    let moved = resample(&v, &grid, Some(&t), Interpolation::Linear, 0.0).unwrap();
    let back = resample(
        &moved,
        &grid,
        Some(&t.inverse()),
        Interpolation::Linear,
        0.0,
    )
    .unwrap();
    let mut worst = 0.0f32;
    for k in 6..18 {
        for j in 6..18 {
            for i in 6..18 {
                worst = worst.max((back.data[[k, j, i]] - v.data[[k, j, i]]).abs());
            }
        }
    }
    // two linear interpolations of a Gaussian of sigma ~4.5 voxels: a few percent of its peak
    assert!(worst < 40.0, "worst {worst}");
    assert!(
        moved.data[[12, 12, 12]] < 900.0,
        "the transform must move the blob"
    );
}

#[derive(Deserialize)]
struct GoldenImage {
    size_xyz: [usize; 3],
    spacing: [f64; 3],
    origin: [f64; 3],
    direction: [f64; 9],
    #[serde(default)]
    data_zyx: Vec<f32>,
}

#[derive(Deserialize)]
struct GoldenTransform {
    center: [f64; 3],
    angles_rad: [f64; 3],
    translation: [f64; 3],
    matrix: [f64; 9],
    points: Vec<[f64; 3]>,
    mapped: Vec<[f64; 3]>,
}

#[derive(Deserialize)]
struct GoldenOutput {
    #[serde(flatten)]
    grid: GoldenImage,
    fill: f32,
    linear_zyx: Vec<f32>,
    nearest_zyx: Vec<f32>,
}

#[derive(Deserialize)]
struct Golden {
    input: GoldenImage,
    transform: GoldenTransform,
    output: GoldenOutput,
}

fn geometry(g: &GoldenImage) -> Geometry {
    let d = g.direction;
    Geometry {
        spacing: g.spacing,
        origin: g.origin,
        direction: [[d[0], d[1], d[2]], [d[3], d[4], d[5]], [d[6], d[7], d[8]]],
    }
}

#[test]
fn matches_simpleitk_resample_with_euler3d_transform() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/processing_resample.json"
    );
    let golden: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let [nx, ny, nz] = golden.input.size_xyz;
    let input = Volume::new(
        Array3::from_shape_vec((nz, ny, nx), golden.input.data_zyx.clone()).unwrap(),
        geometry(&golden.input),
    )
    .unwrap();
    let gt = &golden.transform;
    let t = Rigid3::new(gt.center, gt.angles_rad, gt.translation);

    // The Euler convention: same matrix and same mapped points as ITK.
    let m = t.matrix();
    for (r, row) in m.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            assert!(
                (v - gt.matrix[3 * r + c]).abs() < 1e-12,
                "matrix [{r}][{c}]"
            );
        }
    }
    for (p, want) in gt.points.iter().zip(&gt.mapped) {
        let q = t.apply(*p);
        for a in 0..3 {
            assert!(
                (q[a] - want[a]).abs() < 1e-9,
                "{p:?} -> {q:?}, ITK {want:?}"
            );
        }
    }

    let grid = Grid::new(golden.output.grid.size_xyz, geometry(&golden.output.grid)).unwrap();
    let fill = golden.output.fill;
    for (interp, want) in [
        (Interpolation::Linear, &golden.output.linear_zyx),
        (Interpolation::Nearest, &golden.output.nearest_zyx),
    ] {
        let out = resample(&input, &grid, Some(&t), interp, fill).unwrap();
        assert_eq!(out.data.len(), want.len());
        let mut worst = 0.0f32;
        let mut filled = 0;
        for (a, b) in out.data.iter().zip(want.iter()) {
            assert_eq!(
                *a == fill,
                *b == fill,
                "{interp:?}: inside/outside differs ({a} vs {b})"
            );
            filled += usize::from(*b == fill);
            worst = worst.max((a - b).abs());
        }
        assert!(
            filled > 0 && filled < want.len(),
            "the golden must cover both cases"
        );
        assert!(worst < 1e-4, "{interp:?}: max |diff| {worst}");
    }
}
