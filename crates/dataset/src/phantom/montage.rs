//! The `--preview` montage of a phantom pair: a few axial levels and one coronal cut, each as
//! NCCT (mediastinal window) | CTPA (mediastinal window) | |CTPA − NCCT| | NCCT (lung window).

use super::PhantomCase;
use ndarray::{Array2, Axis};
use util::canvas::Canvas;
use util::preview::{DisplayWindow, TileGrid};

/// Anatomical heights of the axial rows: aortic arch, pulmonary bifurcation, mid heart,
/// lung bases (mm, anatomical frame).
const AXIAL_LEVELS_MM: [f64; 4] = [40.0, -8.0, -62.0, -112.0];

/// One row of the montage: NCCT, CTPA and their difference on one cut, and the tile height.
type Cut = (Array2<f32>, Array2<f32>, Array2<f32>, usize);

/// Pixels per tile side (axial tiles are square).
const TILE: usize = 256;

/// Builds the montage of `case`.
pub fn montage(case: &PhantomCase) -> Canvas {
    let g = case.ncct.geometry;
    let origin = case.params.anatomy_origin;
    let [nx, ny, nz] = case.ncct.size_xyz();
    let fov = [
        g.spacing[0] * nx as f64,
        g.spacing[1] * ny as f64,
        g.spacing[2] * nz as f64,
    ];
    let coronal_h = ((TILE as f64) * fov[2] / fov[0]).round() as usize;
    let grid = TileGrid {
        rows: AXIAL_LEVELS_MM.len() + 1,
        cols: 4,
        cell_width: TILE,
        cell_height: TILE.max(coronal_h),
        pad: 4,
    };
    let mut canvas = grid.canvas(0);
    let diff = &case.ctpa.data - &case.ncct.data;
    let index_of =
        |p: [f64; 3]| g.point_to_index([p[0] + origin[0], p[1] + origin[1], p[2] + origin[2]]);
    let mut cuts: Vec<Cut> = Vec::new();
    for z in AXIAL_LEVELS_MM {
        let k = index_of([0.0, 0.0, z])[2]
            .round()
            .clamp(0.0, (nz - 1) as f64) as usize;
        let take = |a: &ndarray::Array3<f32>| a.index_axis(Axis(0), k).to_owned();
        cuts.push((
            take(&case.ncct.data),
            take(&case.ctpa.data),
            take(&diff),
            TILE,
        ));
    }
    // Coronal cut through the hila; z increases with the index, so flip to put the head up.
    let j = index_of([0.0, 5.0, 0.0])[1]
        .round()
        .clamp(0.0, (ny - 1) as f64) as usize;
    let coronal = |a: &ndarray::Array3<f32>| {
        let mut c = a.index_axis(Axis(1), j).to_owned();
        c.invert_axis(Axis(0));
        c
    };
    cuts.push((
        coronal(&case.ncct.data),
        coronal(&case.ctpa.data),
        coronal(&diff),
        coronal_h,
    ));
    for (row, (ncct, ctpa, d, h)) in cuts.iter().enumerate() {
        let d = d.mapv(f32::abs);
        let tiles = [
            (ncct.view(), DisplayWindow::MEDIASTINUM),
            (ctpa.view(), DisplayWindow::MEDIASTINUM),
            (d.view(), DisplayWindow::range(0.0, 400.0)),
            (ncct.view(), DisplayWindow::LUNG),
        ];
        for (col, (img, window)) in tiles.into_iter().enumerate() {
            let (x, y) = grid.cell(row, col);
            canvas.draw(x, y, img, window, TILE, *h);
        }
    }
    canvas
}
