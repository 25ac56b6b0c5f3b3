//! One picture per evaluated case: NCCT | synthetic CTPA | real CTPA | |synthetic - CTPA| on
//! the axial slice where the model added the most contrast (the largest mean positive
//! difference synthetic - NCCT), which is where a reader looks first. Images in the CT
//! angiography window (level 100, width 700 HU), the error in 0..300 HU.

use ndarray::{Array2, ArrayView3, Axis};
use std::path::Path;
use util::preview::{DisplayWindow, TileGrid};
use volume::Volume;

/// The error tile's range: 0 HU black, 300 HU and above white.
const ERROR_RANGE_HU: f32 = 300.0;

/// The axial slice (index along z) with the largest mean of `max(pred - ncct, 0)`.
pub fn most_enhanced_slice(pred: ArrayView3<'_, f32>, ncct: ArrayView3<'_, f32>) -> usize {
    let mut best = (0, f64::MIN);
    for (z, (p, n)) in pred
        .axis_iter(Axis(0))
        .zip(ncct.axis_iter(Axis(0)))
        .enumerate()
    {
        let gain: f64 = p
            .iter()
            .zip(n.iter())
            .map(|(&p, &n)| f64::from((p - n).max(0.0)))
            .sum::<f64>()
            / p.len().max(1) as f64;
        if gain > best.1 {
            best = (z, gain);
        }
    }
    best.0
}

/// Writes the montage of one case to `path` (PNG); returns the slice shown. The tiles keep
/// the in-plane aspect ratio of the voxels.
pub fn write_montage(
    path: &Path,
    ncct: &Volume,
    pred: &Volume,
    target: &Volume,
) -> Result<usize, util::atomic::WriteError> {
    let z = most_enhanced_slice(pred.data.view(), ncct.data.view());
    let slice = |v: &Volume| v.data.index_axis(Axis(0), z).to_owned();
    let (n, p, t) = (slice(ncct), slice(pred), slice(target));
    let error: Array2<f32> = (&p - &t).mapv(f32::abs);
    let (rows, cols) = n.dim();
    let [sx, sy, _] = pred.geometry.spacing;
    // 256 px wide tiles, height by the physical aspect ratio
    let width = 256usize;
    let height = ((width as f64) * (rows as f64 * sy) / (cols as f64 * sx).max(1e-9))
        .round()
        .clamp(16.0, 1024.0) as usize;
    let grid = TileGrid {
        rows: 1,
        cols: 4,
        cell_width: width,
        cell_height: height,
        pad: 4,
    };
    let mut canvas = grid.canvas(0);
    let tiles = [
        (&n, DisplayWindow::ANGIO, "NCCT"),
        (&p, DisplayWindow::ANGIO, "SYNTHETIC"),
        (&t, DisplayWindow::ANGIO, "CTPA"),
        (&error, DisplayWindow::range(0.0, ERROR_RANGE_HU), "|ERROR|"),
    ];
    for (i, (img, window, label)) in tiles.into_iter().enumerate() {
        let (x, y) = grid.cell(0, i);
        canvas.draw(x, y, img.view(), window, width, height);
        canvas.text(x + 4, y + 4, label, [255, 220, 0], 2);
    }
    let (x0, y0) = grid.cell(0, 0);
    canvas.text(
        x0 + 4,
        y0 + height as i64 - 18,
        &format!("z {z}"),
        [255, 220, 0],
        2,
    );
    canvas.save_png(path)?;
    Ok(z)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn the_slice_with_the_most_added_contrast_is_chosen() {
        let ncct = Array3::<f32>::zeros((4, 3, 3));
        let mut pred = ncct.clone();
        pred[[1, 0, 0]] = 500.0; // one bright voxel
        pred.index_axis_mut(Axis(0), 2).fill(100.0); // a whole slice +100 (mean 100 > 55.6)
        pred.index_axis_mut(Axis(0), 3).fill(-900.0); // darker: no gain
        assert_eq!(most_enhanced_slice(pred.view(), ncct.view()), 2);
    }

    #[test]
    fn writes_a_png_of_four_tiles() {
        let g = volume::Geometry::identity([1.0, 2.0, 5.0]);
        let v = |f: f32| Volume::new(Array3::from_elem((3, 8, 16), f), g).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("case.png");
        let z = write_montage(&path, &v(0.0), &v(200.0), &v(150.0)).unwrap();
        assert_eq!(z, 0);
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        // 4 tiles of 256 px + 5 x 4 px padding; rows * 2 mm / (cols * 1 mm) = 1 -> 256 high
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((w, h), (4 * 256 + 5 * 4, 256 + 2 * 4));
    }
}
