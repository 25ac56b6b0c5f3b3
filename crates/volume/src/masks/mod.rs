//! Classical body and lung masks for chest CT: thresholds, connected components, morphology.
//!
//! The body comes first, so that what lies outside it (air around the patient, the table,
//! blankets) can never become lung: [`body_mask`] is the largest connected object denser than
//! fat-and-air mixtures, after an opening that cuts thin contacts with the table, with each axial
//! slice's holes filled (so lungs, airways and bowel gas are inside it). [`lung_mask`] then
//! takes the air inside that body, keeps the one or two large components that are the lungs
//! (see [`lung_mask`] for the rule that excludes bowel gas), optionally removes the trachea
//! and main bronchi, and closes and fills holes so vessels inside the lungs belong to the mask.
//!
//! The building blocks live in submodules and are reused elsewhere: [`label`] (3D connected
//! components by union-find) and [`morphology`] (mm-radius dilation/erosion through an exact
//! distance transform, per-slice hole filling).

pub mod airway;
pub mod label;
pub mod morphology;

use crate::{Mask, Result, Volume, VolumeError};
use label::{label, Connectivity};
use ndarray::{Array3, Zip};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// Thresholds and sizes of the classical masks. Defaults suit adult chest CT in HU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskConfig {
    /// Voxels above this are body (HU). -500 sits between air (-1000) and fat (-100).
    pub body_threshold_hu: f32,
    /// Radius of the opening that detaches the table before the largest component is taken
    /// (mm); 0 disables it.
    pub body_opening_mm: f64,
    /// Voxels below this inside the body are air (HU). -400 keeps lung parenchyma (-900..-700)
    /// and excludes soft tissue even with noise.
    pub lung_threshold_hu: f32,
    /// Air components smaller than this are never lung (mL): bowel gas bubbles, small airways.
    pub lung_min_volume_ml: f64,
    /// A second component is kept as the other lung only if it is at least this fraction of
    /// the largest one (a stomach bubble is a few percent of a lung).
    pub second_lung_min_fraction: f64,
    /// Radius of the closing that brings vessels at the lung border into the mask (mm).
    pub lung_closing_mm: f64,
    /// Remove the trachea and main bronchi (tracked slice by slice from the top, see
    /// [`airway`]).
    pub exclude_airways: bool,
    /// Largest axial cross-section of the trachea or a main bronchus (mm²); an air region of
    /// one slice larger than this is lung.
    pub airway_max_area_mm2: f64,
}

impl Default for MaskConfig {
    fn default() -> Self {
        Self {
            body_threshold_hu: -500.0,
            body_opening_mm: 3.0,
            lung_threshold_hu: -400.0,
            lung_min_volume_ml: 50.0,
            second_lung_min_fraction: 0.15,
            lung_closing_mm: 4.0,
            exclude_airways: true,
            airway_max_area_mm2: 700.0,
        }
    }
}

/// Spacing in array order `[z, y, x]`.
pub(crate) fn spacing_zyx<T>(v: &Volume<T>) -> [f64; 3] {
    let s = v.geometry.spacing;
    [s[2], s[1], s[0]]
}

/// Body mask: threshold, opening, largest 3D component, per-slice hole filling.
///
/// Returns an all-zero mask (and logs a warning) when nothing is above the threshold.
pub fn body_mask(ct: &Volume, cfg: &MaskConfig) -> Mask {
    let sp = spacing_zyx(ct);
    let thr = ct.data.mapv(|v| u8::from(v > cfg.body_threshold_hu));
    let opened = morphology::open(thr.view(), cfg.body_opening_mm, sp);
    let comps = label(opened.view(), Connectivity::Six);
    let Some(big) = comps.largest() else {
        warn!(
            threshold = cfg.body_threshold_hu,
            "body mask: no voxel above the threshold survives the opening; the mask is empty"
        );
        return Volume {
            data: Array3::zeros(ct.data.dim()),
            geometry: ct.geometry,
        };
    };
    debug!(
        components = comps.count(),
        largest_voxels = comps.sizes[big as usize - 1],
        "body mask: largest component after opening"
    );
    let mut body = comps.select(&[big]);
    if cfg.body_opening_mm > 0.0 {
        // Give back the surface detail the opening removed (skin, thin structures), but only
        // near the body and only where the threshold holds; then keep the main piece again.
        let grown = morphology::dilate(body.view(), cfg.body_opening_mm, sp);
        Zip::from(&mut body)
            .and(&grown)
            .and(&thr)
            .for_each(|b, &g, &t| *b = g & t);
        let again = label(body.view(), Connectivity::Six);
        if let Some(l) = again.largest() {
            body = again.select(&[l]);
        }
    }
    morphology::fill_holes_2d(&mut body);
    debug!(
        voxels = body.iter().filter(|&&v| v != 0).count(),
        "body mask done"
    );
    Volume {
        data: body,
        geometry: ct.geometry,
    }
}

/// Per-component facts used to decide which air is lung.
#[derive(Debug, Clone, Copy)]
struct AirStats {
    voxels: usize,
    touches_side: bool,
    z_min: f64,
    z_max: f64,
    z_sum: f64,
}

/// Lung mask: air inside the body, the lungs among its components, airways removed, closed and
/// hole-filled.
///
/// Which air components are lungs:
/// 1. air is `ct < lung_threshold_hu` inside `body` (so the air around the patient, which is
///    outside the body mask, never counts); components (6-connected) that touch the in-plane
///    border of the image are dropped too (air that is open to the outside);
/// 2. components below `lung_min_volume_ml` are dropped (bowel gas bubbles, stray voxels);
/// 3. the largest remaining one is a lung (both lungs when the airways connect them);
/// 4. the second largest is the other lung only if it has at least `second_lung_min_fraction`
///    of the largest one's volume **and** its centroid lies within the superior–inferior
///    (LPS z) extent of the largest one — bowel and stomach gas lie below the lungs and are
///    much smaller; nothing else is kept.
///
/// Errors if `body` is not on the grid of `ct`.
pub fn lung_mask(ct: &Volume, body: &Mask, cfg: &MaskConfig) -> Result<Mask> {
    if !ct.same_grid(body, 1e-3) {
        return Err(VolumeError::invalid(format!(
            "lung mask: the body mask grid ({:?}, {:?}) differs from the CT grid ({:?}, {:?})",
            body.size_xyz(),
            body.geometry,
            ct.size_xyz(),
            ct.geometry
        )));
    }
    let sp = spacing_zyx(ct);
    let voxel_ml = sp.iter().product::<f64>() / 1000.0;
    let mut air = Array3::<u8>::zeros(ct.data.dim());
    Zip::from(&mut air)
        .and(&ct.data)
        .and(&body.data)
        .for_each(|a, &v, &b| *a = u8::from(b != 0 && v < cfg.lung_threshold_hu));
    let comps = label(air.view(), Connectivity::Six);

    // 1. statistics per component
    let (nz, ny, nx) = ct.data.dim();
    let g = &ct.geometry;
    let mut stats = vec![
        AirStats {
            voxels: 0,
            touches_side: false,
            z_min: f64::INFINITY,
            z_max: f64::NEG_INFINITY,
            z_sum: 0.0,
        };
        comps.count()
    ];
    for ((k, j, i), &l) in comps.labels.indexed_iter() {
        if l == 0 {
            continue;
        }
        let s = &mut stats[l as usize - 1];
        s.voxels += 1;
        if i == 0 || j == 0 || i + 1 == nx || j + 1 == ny {
            s.touches_side = true;
        }
        let z = g.index_to_point([i as f64, j as f64, k as f64])[2];
        s.z_min = s.z_min.min(z);
        s.z_max = s.z_max.max(z);
        s.z_sum += z;
    }
    let _ = nz;

    // 2-4. choose the lungs
    let mut candidates: Vec<u32> = comps
        .by_size()
        .into_iter()
        .filter(|&l| {
            let s = &stats[l as usize - 1];
            !s.touches_side && s.voxels as f64 * voxel_ml >= cfg.lung_min_volume_ml
        })
        .collect();
    candidates.truncate(2);
    let mut keep = Vec::new();
    if let Some(&first) = candidates.first() {
        keep.push(first);
        let a = stats[first as usize - 1];
        if let Some(&second) = candidates.get(1) {
            let b = stats[second as usize - 1];
            let centroid = b.z_sum / b.voxels as f64;
            let big_enough = b.voxels as f64 >= cfg.second_lung_min_fraction * a.voxels as f64;
            let level = centroid >= a.z_min && centroid <= a.z_max;
            debug!(
                second_ml = b.voxels as f64 * voxel_ml,
                first_ml = a.voxels as f64 * voxel_ml,
                big_enough,
                level,
                "lung mask: second air component"
            );
            if big_enough && level {
                keep.push(second);
            }
        }
    } else {
        warn!(
            components = comps.count(),
            min_ml = cfg.lung_min_volume_ml,
            "lung mask: no air component inside the body is large enough; the mask is empty"
        );
    }
    debug!(
        kept = ?keep.iter().map(|&l| stats[l as usize - 1].voxels as f64 * voxel_ml).collect::<Vec<_>>(),
        "lung mask: kept components (mL)"
    );
    let mut lungs = comps.select(&keep);

    // 5. airways
    if cfg.exclude_airways && !keep.is_empty() {
        let removed = airway::remove_airways(&mut lungs, &ct.geometry, cfg.airway_max_area_mm2);
        debug!(voxels = removed, "lung mask: airway voxels removed");
    }

    // 6. vessels: close, stay in the body, fill holes per slice
    let mut closed = morphology::close(lungs.view(), cfg.lung_closing_mm, sp);
    Zip::from(&mut closed)
        .and(&body.data)
        .for_each(|c, &b| *c &= u8::from(b != 0));
    morphology::fill_holes_2d(&mut closed);
    Ok(Volume {
        data: closed,
        geometry: ct.geometry,
    })
}
