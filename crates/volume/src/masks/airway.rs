//! Removing the trachea and main bronchi from a lung air mask.
//!
//! Airways are air like the lungs and connected to them, so thresholds and 3D components cannot
//! separate them. Their axial cross-section, though, is small (a trachea is 15–25 mm across) and
//! they enter the volume from the top, on the midline. So the trachea is found in the most
//! superior slice that holds air (the small region nearest the midline) and followed downwards:
//! in each next slice, every small region that overlaps the airway of the slice above is airway
//! too (this follows the split at the carina into both main bronchi), until a region that
//! overlaps it is larger than `max_area_mm2` — the bronchus has merged with the lung in that
//! slice — or nothing overlaps any more. Smaller bronchi inside the lungs stay in the mask, as
//! lung masks in the literature usually keep them.

use super::label::{label, Connectivity};
use crate::Geometry;
use ndarray::{s, Array2, Array3, Axis};
use tracing::debug;

/// Largest distance of the trachea's centre from the midline of the lungs (mm).
const MIDLINE_TOLERANCE_MM: f64 = 30.0;

/// Removes airway voxels from `lungs` (`[z, y, x]`, 0/1) in place; returns how many.
pub fn remove_airways(lungs: &mut Array3<u8>, geometry: &Geometry, max_area_mm2: f64) -> usize {
    let (nz, _ny, _nx) = lungs.dim();
    let pixel_mm2 = geometry.spacing[0] * geometry.spacing[1];
    let max_pixels = (max_area_mm2 / pixel_mm2).floor() as usize;
    // LPS z is superior: walk slices from the one with the largest z.
    let superior_last = geometry.direction[2][2] >= 0.0;
    let order: Vec<usize> = if superior_last {
        (0..nz).rev().collect()
    } else {
        (0..nz).collect()
    };
    // Midline: mean x index of all lung voxels.
    let (mut sum_x, mut count) = (0.0f64, 0usize);
    for ((_, _, x), &v) in lungs.indexed_iter() {
        if v != 0 {
            sum_x += x as f64;
            count += 1;
        }
    }
    if count == 0 {
        return 0;
    }
    let midline = sum_x / count as f64;

    let mut removed = 0usize;
    let mut tracked: Option<Array2<bool>> = None;
    for &k in &order {
        let slice = lungs.slice(s![k..k + 1, .., ..]);
        if tracked.is_none() && !slice.iter().any(|&v| v != 0) {
            continue; // above the first slice with air
        }
        let comps = label(slice, Connectivity::Six);
        let labels = comps.labels.index_axis(Axis(0), 0);
        let mut airway_labels: Vec<u32> = Vec::new();
        match &tracked {
            None => {
                // The most superior slice with air: pick the trachea.
                let mut cx = vec![0.0f64; comps.count()];
                for ((_, x), &l) in labels.indexed_iter() {
                    if l != 0 {
                        cx[l as usize - 1] += x as f64;
                    }
                }
                let best = (1..=comps.count() as u32)
                    .filter(|&l| comps.sizes[l as usize - 1] <= max_pixels)
                    .map(|l| {
                        let c = cx[l as usize - 1] / comps.sizes[l as usize - 1] as f64;
                        (l, (c - midline).abs() * geometry.spacing[0])
                    })
                    .filter(|&(_, d)| d <= MIDLINE_TOLERANCE_MM)
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                match best {
                    Some((l, d)) => {
                        debug!(slice = k, offset_mm = d, "airways: trachea found");
                        airway_labels.push(l);
                    }
                    None => {
                        debug!(slice = k, "airways: no trachea in the top slice with air");
                        return 0;
                    }
                }
            }
            Some(prev) => {
                let mut overlapping = vec![false; comps.count()];
                for ((y, x), &l) in labels.indexed_iter() {
                    if l != 0 && prev[[y, x]] {
                        overlapping[l as usize - 1] = true;
                    }
                }
                for (i, &o) in overlapping.iter().enumerate() {
                    if !o {
                        continue;
                    }
                    if comps.sizes[i] <= max_pixels {
                        airway_labels.push(i as u32 + 1);
                    } else {
                        debug!(slice = k, "airways: a bronchus joins the lung here");
                    }
                }
            }
        }
        if airway_labels.is_empty() {
            break;
        }
        let mut next = Array2::from_elem(labels.dim(), false);
        for ((y, x), &l) in labels.indexed_iter() {
            if l != 0 && airway_labels.contains(&l) {
                next[[y, x]] = true;
            }
        }
        let mut plane = lungs.index_axis_mut(Axis(0), k);
        for ((y, x), &a) in next.indexed_iter() {
            if a {
                plane[[y, x]] = 0;
                removed += 1;
            }
        }
        tracked = Some(next);
    }
    removed
}
