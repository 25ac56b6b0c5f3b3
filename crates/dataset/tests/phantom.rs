//! Phantom generator: determinism, HU statistics per structure, what differs between NCCT and
//! CTPA, and that the stored displacement field really maps the moved CTPA back.

use dataset::phantom::{generate_case, PhantomCase, PhantomConfig};
use ndarray::{Array3, Zip};
use std::sync::OnceLock;

/// One misaligned case with emboli, shared by the tests (generation takes about a second).
fn case() -> &'static PhantomCase {
    static CASE: OnceLock<PhantomCase> = OnceLock::new();
    CASE.get_or_init(|| {
        let cfg = PhantomConfig {
            seed: 11,
            misalignment_mm: 6.0,
            emboli_probability: 1.0,
            ..Default::default()
        };
        generate_case(&cfg, 0).expect("phantom case")
    })
}

fn mean_where(img: &Array3<f32>, mask: &Array3<u8>) -> (f64, usize) {
    let mut s = 0.0;
    let mut n = 0;
    Zip::from(img).and(mask).for_each(|&v, &m| {
        if m != 0 {
            s += v as f64;
            n += 1;
        }
    });
    (s / n.max(1) as f64, n)
}

/// Erodes a mask by `r` voxels in-plane and 1 slice (6-neighbourhood, repeated): the interior
/// of a structure, away from partial-volume edges.
fn erode(m: &Array3<u8>, r: usize) -> Array3<u8> {
    let mut cur = m.clone();
    let (nz, ny, nx) = m.dim();
    for _ in 0..r {
        let prev = cur.clone();
        Zip::indexed(&mut cur).for_each(|(k, j, i), v| {
            if *v == 0 {
                return;
            }
            let get = |k: isize, j: isize, i: isize| {
                if k < 0
                    || j < 0
                    || i < 0
                    || k >= nz as isize
                    || j >= ny as isize
                    || i >= nx as isize
                {
                    0
                } else {
                    prev[[k as usize, j as usize, i as usize]]
                }
            };
            let (k, j, i) = (k as isize, j as isize, i as isize);
            if get(k, j - 1, i) == 0
                || get(k, j + 1, i) == 0
                || get(k, j, i - 1) == 0
                || get(k, j, i + 1) == 0
            {
                *v = 0;
            }
        });
    }
    cur
}

fn dilate(m: &Array3<u8>, r: usize) -> Array3<u8> {
    erode(&m.mapv(|v| 1 - v.min(1)), r).mapv(|v| 1 - v)
}

fn and_not(a: &Array3<u8>, b: &Array3<u8>) -> Array3<u8> {
    Zip::from(a)
        .and(b)
        .map_collect(|&x, &y| u8::from(x != 0 && y == 0))
}

#[test]
fn same_seed_same_voxels_different_seed_different() {
    let cfg = PhantomConfig {
        seed: 3,
        ..Default::default()
    };
    let a = generate_case(&cfg, 1).unwrap();
    let b = generate_case(&cfg, 1).unwrap();
    assert_eq!(a.ncct, b.ncct);
    assert_eq!(a.ctpa, b.ctpa);
    assert_eq!(a.displacement, b.displacement);
    assert_eq!(a.arteries, b.arteries);
    let other_seed = generate_case(
        &PhantomConfig {
            seed: 4,
            ..cfg.clone()
        },
        1,
    )
    .unwrap();
    assert_ne!(a.ncct.data, other_seed.ncct.data);
    let other_case = generate_case(&cfg, 2).unwrap();
    assert_ne!(a.ncct.data, other_case.ncct.data);
}

#[test]
fn masks_are_binary_and_nested() {
    let c = case();
    for m in [&c.body, &c.lung, &c.arteries, &c.veins, &c.emboli, &c.blood] {
        assert!(m.data.iter().all(|&v| v <= 1));
        assert_eq!(m.geometry, c.ncct.geometry);
    }
    let n = c.body.data.len() as f64;
    let lung = c.lung.data.iter().filter(|&&v| v == 1).count() as f64;
    let body = c.body.data.iter().filter(|&&v| v == 1).count() as f64;
    // Lungs fill a good part of a chest CT's body; the body a good part of the field of view.
    assert!(
        lung / body > 0.2 && lung / body < 0.6,
        "lung fraction of body {}",
        lung / body
    );
    assert!(body / n > 0.25, "body fraction {}", body / n);
    // Emboli lie inside arteries; arteries and veins do not overlap; lungs inside the body.
    Zip::from(&c.emboli.data)
        .and(&c.arteries.data)
        .and(&c.veins.data)
        .for_each(|&e, &a, &v| {
            assert!(e <= a);
            assert!(a + v <= 1);
        });
    Zip::from(&c.lung.data)
        .and(&c.body.data)
        .for_each(|&l, &b| assert!(l <= b));
    assert!(
        c.emboli.data.iter().any(|&v| v == 1),
        "emboli_probability 1 gives emboli"
    );
    assert!(!c.params.emboli.is_empty());
}

#[test]
fn hounsfield_units_per_structure() {
    let c = case();
    let (lung, _) = mean_where(
        &c.ncct.data,
        &and_not(&c.lung.data, &dilate(&c.blood.data, 1)),
    );
    assert!((-900.0..=-750.0).contains(&lung), "lung {lung}");
    // Blood in the NCCT: the interior of the blood pool.
    let blood_core = erode(&c.blood.data, 2);
    let (blood, n) = mean_where(&c.ncct.data, &blood_core);
    assert!(
        n > 500 && (30.0..=55.0).contains(&blood),
        "NCCT blood {blood} over {n}"
    );
    // Pulmonary arteries in the CTPA (large ones, away from their walls, without clot).
    let art_core = and_not(&erode(&c.arteries.data, 1), &dilate(&c.emboli.data, 1));
    let (pa, n) = mean_where(&c.ctpa_aligned.data, &art_core);
    assert!(
        n > 100 && (300.0..=450.0).contains(&pa),
        "CTPA PA {pa} over {n}"
    );
    let (pa_ncct, _) = mean_where(&c.ncct.data, &art_core);
    assert!(pa_ncct < 70.0, "NCCT PA {pa_ncct}");
    // Emboli are filling defects: dark inside the bright arteries.
    let (emb, n) = mean_where(&c.ctpa_aligned.data, &c.emboli.data);
    assert!(n > 0 && emb < 150.0, "CTPA emboli {emb} over {n}");
    let core = erode(&c.emboli.data, 1);
    if core.iter().any(|&v| v == 1) {
        let (emb_core, _) = mean_where(&c.ctpa_aligned.data, &core);
        assert!(emb_core < 100.0, "CTPA emboli core {emb_core}");
    }
    // The systemic side (aorta, left heart) is enhanced less than the pulmonary arteries.
    let left = and_not(&blood_core, &dilate(&c.arteries.data, 1));
    let ctpa_contrast = c.params.contrast;
    assert!(ctpa_contrast.aorta_ctpa < ctpa_contrast.pulmonary_artery_ctpa);
    let (systemic, _) = mean_where(&c.ctpa_aligned.data, &left);
    assert!(systemic > 100.0, "CTPA other blood {systemic}");
}

#[test]
fn ctpa_differs_from_ncct_only_where_contrast_is() {
    let c = case();
    let sigma = PhantomConfig::default().noise_hu as f64;
    // Outside the (dilated) blood pool, myocardium and upper abdomen aside, the aligned
    // CTPA is the NCCT up to two independent noise realisations: mean 0, std sqrt(2) sigma.
    let quiet = and_not(&c.lung.data, &dilate(&c.blood.data, 2));
    let diff = &c.ctpa_aligned.data - &c.ncct.data;
    let (mean, n) = mean_where(&diff, &quiet);
    let var = {
        let sq = diff.mapv(|d| (d as f64 - mean).powi(2) as f32);
        mean_where(&sq, &quiet).0
    };
    assert!(n > 10_000);
    // Sub-voxel vessels (in no mask) add a little partial-volume contrast to the lung.
    assert!(mean.abs() < 4.0, "mean difference in lung {mean}");
    let std = var.sqrt();
    assert!(
        (std / (sigma * 2f64.sqrt()) - 1.0).abs() < 0.25,
        "std {std}"
    );
    // Voxels where the CTPA is much brighter (> 100 HU) lie in or next to blood.
    let bright = diff.mapv(|d| u8::from(d > 100.0));
    let near_blood = dilate(&c.blood.data, 2);
    let (inside, total) = mean_where(&near_blood.mapv(f32::from), &bright);
    assert!(
        total > 1000 && inside > 0.97,
        "{inside} of {total} bright voxels near blood"
    );
}

/// Trilinear sample of `a` at continuous index `(i, j, k)` = `(x, y, z)`, clamped.
fn sample(a: &Array3<f32>, idx: [f64; 3]) -> f32 {
    let (nz, ny, nx) = a.dim();
    let n = [nx, ny, nz];
    let mut lo = [0usize; 3];
    let mut f = [0f32; 3];
    for d in 0..3 {
        let x = idx[d].clamp(0.0, (n[d] - 1) as f64);
        lo[d] = (x.floor() as usize).min(n[d] - 2);
        f[d] = (x - lo[d] as f64) as f32;
    }
    let mut acc = 0.0;
    for c in 0..8usize {
        let (di, dj, dk) = (c & 1, (c >> 1) & 1, (c >> 2) & 1);
        let w = (if di == 1 { f[0] } else { 1.0 - f[0] })
            * (if dj == 1 { f[1] } else { 1.0 - f[1] })
            * (if dk == 1 { f[2] } else { 1.0 - f[2] });
        acc += w * a[[lo[2] + dk, lo[1] + dj, lo[0] + di]];
    }
    acc
}

/// Whether the 3x3x3 neighbourhood of a voxel spans less than 150 HU: where trilinear
/// interpolation of 5 mm slices is accurate, so a resampling check is not drowned by
/// interpolation error at sharp edges.
fn smooth(a: &Array3<f32>, k: usize, j: usize, i: usize) -> bool {
    let (nz, ny, nx) = a.dim();
    if k == 0 || j == 0 || i == 0 || k + 1 >= nz || j + 1 >= ny || i + 1 >= nx {
        return false;
    }
    let n = a.slice(ndarray::s![k - 1..k + 2, j - 1..j + 2, i - 1..i + 2]);
    let (lo, hi) = n
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    hi - lo < 150.0
}

#[test]
fn displacement_field_maps_the_ctpa_back_onto_the_ncct_grid() {
    let cfg = PhantomConfig {
        seed: 5,
        misalignment_mm: 12.0,
        noise_hu: 0.0,
        ..Default::default()
    };
    let c = generate_case(&cfg, 0).unwrap();
    let g = c.ncct.geometry;
    // The largest displacement inside the body is the requested misalignment.
    assert!(
        (c.params.max_displacement_mm - 12.0).abs() < 0.05,
        "{}",
        c.params.max_displacement_mm
    );
    let (nz, ny, nx) = c.ncct.data.dim();
    let (mut moved_err, mut back_err, mut wrong_err, mut n) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for k in (2..nz - 2).step_by(3) {
        for j in (0..ny).step_by(2) {
            for i in (0..nx).step_by(2) {
                if c.body.data[[k, j, i]] == 0 || !smooth(&c.ctpa_aligned.data, k, j, i) {
                    continue;
                }
                let p = g.index_to_point([i as f64, j as f64, k as f64]);
                let u = [
                    c.displacement[0][[k, j, i]] as f64,
                    c.displacement[1][[k, j, i]] as f64,
                    c.displacement[2][[k, j, i]] as f64,
                ];
                let q = g.point_to_index([p[0] + u[0], p[1] + u[1], p[2] + u[2]]);
                let want = c.ctpa_aligned.data[[k, j, i]];
                back_err += (sample(&c.ctpa.data, q) - want).abs() as f64;
                let q_wrong = g.point_to_index([p[0] - u[0], p[1] - u[1], p[2] - u[2]]);
                wrong_err += (sample(&c.ctpa.data, q_wrong) - want).abs() as f64;
                moved_err += (c.ctpa.data[[k, j, i]] - want).abs() as f64;
                n += 1;
            }
        }
    }
    let (back, moved, wrong) = (
        back_err / n as f64,
        moved_err / n as f64,
        wrong_err / n as f64,
    );
    assert!(n > 5000);
    assert!(moved > 5.0, "the motion should be visible: {moved} HU");
    // Sampling the CTPA at p + u(p) undoes most of the motion (what remains is trilinear
    // interpolation error, applied twice, on 5 mm slices); at p - u(p) it doubles it.
    assert!(
        back < 0.5 * moved,
        "warping back: {back} HU vs {moved} HU without"
    );
    assert!(
        wrong > moved,
        "the opposite sign should be worse: {wrong} vs {moved}"
    );
}

#[test]
fn zero_misalignment_gives_identical_ctpas_and_a_zero_field() {
    let cfg = PhantomConfig {
        seed: 2,
        misalignment_mm: 0.0,
        ..Default::default()
    };
    let c = generate_case(&cfg, 0).unwrap();
    assert_eq!(c.ctpa.data, c.ctpa_aligned.data);
    assert!(c.displacement.iter().all(|f| f.iter().all(|&v| v == 0.0)));
    assert_eq!(c.params.max_displacement_mm, 0.0);
}

#[test]
fn geometry_looks_like_a_scanner() {
    let c = case();
    let g = c.ncct.geometry;
    assert_eq!(c.ncct.size_xyz(), [128, 128, 56]);
    assert!(g.origin[0] < 0.0 && g.origin[1] < 0.0);
    assert_eq!(g.spacing, [2.8125, 2.8125, 5.0]);
    let (lo, hi) = c.ncct.value_range().unwrap();
    assert!(
        lo >= -1024.0 && hi > 500.0 && hi <= 3071.0,
        "range {lo}..{hi}"
    );
}

#[test]
fn bad_configuration_is_a_typed_error() {
    for cfg in [
        PhantomConfig {
            misalignment_mm: -1.0,
            ..Default::default()
        },
        PhantomConfig {
            misalignment_mm: f64::NAN,
            ..Default::default()
        },
        PhantomConfig {
            emboli_probability: 1.5,
            ..Default::default()
        },
        PhantomConfig {
            noise_hu: f32::INFINITY,
            ..Default::default()
        },
    ] {
        let err = generate_case(&cfg, 0).unwrap_err();
        assert!(
            err.to_string().contains("invalid phantom configuration"),
            "{err}"
        );
    }
}

/// `bronchi`: airways beside the arteries, in the lungs, in both scans alike: the masks stay
/// the same, the NCCT changes in the lungs, mostly next to the arteries, darker (the air
/// lumen) and brighter (the wall), and the contrast
/// (CTPA − NCCT on an aligned pair) does not change.
#[test]
fn bronchi_run_beside_the_arteries_in_both_scans_alike() {
    let plain_cfg = PhantomConfig {
        seed: 11,
        misalignment_mm: 0.0,
        ..Default::default()
    };
    let with_cfg = PhantomConfig {
        bronchi: true,
        ..plain_cfg.clone()
    };
    let (plain, with) = (
        generate_case(&plain_cfg, 0).unwrap(),
        generate_case(&with_cfg, 0).unwrap(),
    );
    for (name, a, b) in [
        ("body", &plain.body, &with.body),
        ("lung", &plain.lung, &with.lung),
        ("arteries", &plain.arteries, &with.arteries),
        ("veins", &plain.veins, &with.veins),
    ] {
        assert_eq!(a.data, b.data, "{name} mask");
    }
    let changed = Zip::from(&plain.ncct.data)
        .and(&with.ncct.data)
        .map_collect(|&a, &b| u8::from((a - b).abs() > 1.0));
    let n = changed.iter().filter(|&&v| v != 0).count();
    assert!(n > 500, "only {n} voxels changed");
    let share = |mask: &Array3<u8>| {
        let inside = Zip::from(&changed)
            .and(mask)
            .fold(0usize, |s, &c, &m| s + usize::from(c != 0 && m != 0));
        inside as f64 / n as f64
    };
    let lung = share(&plain.lung.data);
    assert!(lung > 0.99, "{lung:.3} of the changed voxels in the lungs");
    // near the arteries (the mask misses the arteries thinner than half a voxel, so not all):
    // several times as often as lung voxels in general are
    let around = dilate(&plain.arteries.data, 3);
    let near = share(&around);
    let lung_voxels = plain.lung.data.iter().filter(|&&m| m != 0).count();
    let lung_near = Zip::from(&around)
        .and(&plain.lung.data)
        .fold(0usize, |s, &a, &m| s + usize::from(a != 0 && m != 0)) as f64
        / lung_voxels as f64;
    assert!(
        near > 2.0 * lung_near,
        "{near:.3} of the changed voxels near the arteries, {lung_near:.3} of the lung"
    );
    // the lumen darkens (air), the wall brightens (soft tissue)
    let (mut darker, mut brighter) = (0usize, 0usize);
    Zip::from(&plain.ncct.data)
        .and(&with.ncct.data)
        .for_each(|&a, &b| match b - a {
            d if d < -20.0 => darker += 1,
            d if d > 20.0 => brighter += 1,
            _ => {}
        });
    assert!(
        darker > 100 && brighter > 100,
        "{darker} voxels darker, {brighter} brighter by 20 HU, {n} changed"
    );
    let contrast = |c: &PhantomCase| &c.ctpa.data - &c.ncct.data;
    let (d0, d1) = (contrast(&plain), contrast(&with));
    let worst = Zip::from(&d0)
        .and(&d1)
        .fold(0f32, |m, &a, &b| m.max((a - b).abs()));
    assert!(worst < 0.05, "the contrast moved by {worst} HU");
}
