//! Voxelisation: turns the anatomy, the tubes and the emboli into noise-free NCCT and CTPA
//! images (HU) and the ground-truth masks, slice by slice in parallel.
//!
//! Per voxel: the tissue map gives a base value (plus a texture that is a function of the
//! anatomical position, so it moves with the tissue); then tube classes are blended over it in
//! painting order with their partial-volume coverage, so vessels thinner than a voxel still
//! show, as they do on a real scanner.

use super::anatomy::{Anatomy, Heart, PaintTube, MEDIASTINAL_MARGIN_MM};
use super::deformation::Frame;
use super::noise::ValueNoise;
use super::shapes::{smoothstep, V3};
use super::tissue::{Contrast, Scan, Tissue, TubeClass};
use super::vessels::Embolus;
use ndarray::{Array2, Array3};
use rayon::prelude::*;

/// Everything that is drawn.
#[derive(Debug, Clone)]
pub struct Scene {
    pub anatomy: Anatomy,
    pub heart: Heart,
    pub contrast: Contrast,
    pub tubes: Vec<PaintTube>,
    pub emboli: Vec<Embolus>,
}

/// Noise-free images and masks on the phantom grid (`[z, y, x]`).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub ncct: Array3<f32>,
    pub ctpa: Array3<f32>,
    pub body: Array3<u8>,
    pub lung: Array3<u8>,
    pub arteries: Array3<u8>,
    pub veins: Array3<u8>,
    pub emboli: Array3<u8>,
    pub blood: Array3<u8>,
}

struct SliceOut {
    ncct: Array2<f32>,
    ctpa: Array2<f32>,
    masks: [Array2<u8>; 6],
}

/// Renders the scene on `frame`'s grid of shape `[z, y, x]`.
pub fn render(scene: &Scene, frame: &Frame, shape: [usize; 3]) -> Rendered {
    let [nz, ny, nx] = shape;
    let slices: Vec<SliceOut> = (0..nz)
        .into_par_iter()
        .map(|k| render_slice(scene, frame, k, ny, nx))
        .collect();
    let mut out = Rendered {
        ncct: Array3::zeros(shape),
        ctpa: Array3::zeros(shape),
        body: Array3::zeros(shape),
        lung: Array3::zeros(shape),
        arteries: Array3::zeros(shape),
        veins: Array3::zeros(shape),
        emboli: Array3::zeros(shape),
        blood: Array3::zeros(shape),
    };
    for (k, s) in slices.into_iter().enumerate() {
        out.ncct.index_axis_mut(ndarray::Axis(0), k).assign(&s.ncct);
        out.ctpa.index_axis_mut(ndarray::Axis(0), k).assign(&s.ctpa);
        let targets = [
            &mut out.body,
            &mut out.lung,
            &mut out.arteries,
            &mut out.veins,
            &mut out.emboli,
            &mut out.blood,
        ];
        for (t, m) in targets.into_iter().zip(s.masks.iter()) {
            t.index_axis_mut(ndarray::Axis(0), k).assign(m);
        }
    }
    out
}

/// Index range `[lo, hi]` (inclusive, clamped) of the voxels whose centres lie within
/// `[lo_mm, hi_mm]` along axis `a` of an axis-aligned frame.
fn index_range(frame: &Frame, lo_mm: V3, hi_mm: V3, a: usize, n: usize) -> Option<(usize, usize)> {
    let i0 = frame.index(lo_mm)[a];
    let i1 = frame.index(hi_mm)[a];
    let (lo, hi) = (i0.min(i1).ceil(), i0.max(i1).floor());
    if hi < 0.0 || lo > (n - 1) as f64 {
        return None;
    }
    Some((lo.max(0.0) as usize, hi.min((n - 1) as f64) as usize))
}

fn render_slice(scene: &Scene, frame: &Frame, k: usize, ny: usize, nx: usize) -> SliceOut {
    let sp = frame.geometry.spacing;
    let h = sp[0].max(sp[1]);
    let z = frame.point(0, 0, k)[2];
    let n = ny * nx;
    // 1. Tube coverage per class on this slice, and the mediastinal margin.
    let mut cov = vec![vec![0f32; n]; TubeClass::COUNT];
    let mut mediastinum = vec![false; n];
    for pt in &scene.tubes {
        let reach = if pt.mediastinal {
            MEDIASTINAL_MARGIN_MM.max(h)
        } else {
            h
        };
        let (mut lo, mut hi) = pt.tube.bounds();
        if z < lo[2] - reach || z > hi[2] + reach {
            continue;
        }
        for a in 0..2 {
            lo[a] -= reach;
            hi[a] += reach;
        }
        let (Some((j0, j1)), Some((i0, i1))) = (
            index_range(frame, lo, hi, 1, ny),
            index_range(frame, lo, hi, 0, nx),
        ) else {
            continue;
        };
        let c = &mut cov[pt.class as usize];
        for j in j0..=j1 {
            for i in i0..=i1 {
                let depth = pt.tube.depth(frame.point(i, j, k));
                let v = (0.5 - depth / h).clamp(0.0, 1.0) as f32;
                let idx = j * nx + i;
                if v > c[idx] {
                    c[idx] = v;
                }
                if pt.mediastinal && depth < MEDIASTINAL_MARGIN_MM {
                    mediastinum[idx] = true;
                }
            }
        }
    }
    for e in &scene.emboli {
        let (lo, hi) = e.bounds();
        if z < lo[2] - h || z > hi[2] + h {
            continue;
        }
        let (Some((j0, j1)), Some((i0, i1))) = (
            index_range(frame, lo, hi, 1, ny),
            index_range(frame, lo, hi, 0, nx),
        ) else {
            continue;
        };
        let c = &mut cov[TubeClass::Embolus as usize];
        for j in j0..=j1 {
            for i in i0..=i1 {
                let v = e.coverage(frame.point(i, j, k), h) as f32;
                let idx = j * nx + i;
                c[idx] = c[idx].max(v);
            }
        }
    }
    // A clot only exists inside the arterial lumen.
    let art = std::mem::take(&mut cov[TubeClass::PulmonaryArtery as usize]);
    for (e, a) in cov[TubeClass::Embolus as usize].iter_mut().zip(&art) {
        *e = e.min(*a);
    }
    cov[TubeClass::PulmonaryArtery as usize] = art;

    // 2. Tissue, texture, painting, masks.
    let texture = ValueNoise::new(scene.anatomy.texture_seed);
    let mut out = SliceOut {
        ncct: Array2::zeros((ny, nx)),
        ctpa: Array2::zeros((ny, nx)),
        masks: std::array::from_fn(|_| Array2::zeros((ny, nx))),
    };
    for j in 0..ny {
        for i in 0..nx {
            let idx = j * nx + i;
            let p = frame.point(i, j, k);
            let t = scene.anatomy.classify(p, &scene.heart, mediastinum[idx]);
            let tex = tissue_texture(&scene.anatomy, &texture, t, p);
            let mut hu_n = scene.contrast.tissue_hu(t, Scan::Ncct) + tex;
            let mut hu_c = scene.contrast.tissue_hu(t, Scan::Ctpa) + tex;
            let mut blood = t.is_blood();
            for class in TubeClass::ALL {
                let c = cov[class as usize][idx];
                if c <= 0.0 {
                    continue;
                }
                hu_n += (scene.contrast.tube_hu(class, Scan::Ncct) - hu_n) * c;
                hu_c += (scene.contrast.tube_hu(class, Scan::Ctpa) - hu_c) * c;
                blood |= class.is_blood() && c >= 0.5;
            }
            out.ncct[[j, i]] = hu_n;
            out.ctpa[[j, i]] = hu_c;
            let art = cov[TubeClass::PulmonaryArtery as usize][idx] >= 0.5;
            let vein = cov[TubeClass::PulmonaryVein as usize][idx] >= 0.5;
            let emb = cov[TubeClass::Embolus as usize][idx] >= 0.5;
            let flags = [
                t.is_body(),
                t == Tissue::Lung,
                art,
                vein && !art,
                emb,
                blood,
            ];
            for (m, f) in out.masks.iter_mut().zip(flags) {
                m[[j, i]] = u8::from(f);
            }
        }
    }
    out
}

/// Texture of a tissue at `p` (HU, zero mean): the lung's fine parenchymal pattern and its
/// gravity-dependent density (the patient lies supine, so posterior lung is denser), grain in
/// fat and muscle, trabeculae in cancellous bone.
fn tissue_texture(a: &Anatomy, noise: &ValueNoise, t: Tissue, p: V3) -> f32 {
    let v = match t {
        Tissue::Lung => {
            let dependent = smoothstep(
                a.body_center_y - 0.2 * a.body_half_depth,
                a.body_center_y + 0.85 * a.body_half_depth,
                p[1],
            );
            28.0 * noise.fbm(p, 9.0, 3) + 75.0 * dependent * dependent - 10.0
        }
        Tissue::Fat | Tissue::MediastinalFat => 10.0 * noise.fbm(p, 6.0, 2),
        Tissue::Muscle => 7.0 * noise.fbm(p, 8.0, 2),
        Tissue::CancellousBone => 70.0 * noise.fbm(p, 3.0, 2),
        Tissue::Liver => 5.0 * noise.fbm(p, 10.0, 2),
        _ => 0.0,
    };
    v as f32
}
