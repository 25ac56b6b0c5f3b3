//! Montages of CT slices: display windows (window/level) and a grid of tiles, drawn on a
//! [`Canvas`] (`Canvas::draw` resamples each tile to its cell).
//!
//! Used by `ncct2ctpa synth --preview` for phantom pairs and by the trainer for sample grids.
//! A [`DisplayWindow`] is a viewer's window/level (black..white), not the network's
//! `IntensityWindow` (HU to [-1, 1]) nor the metrics' `ScoreWindow` (clip and data range).

use crate::canvas::Canvas;

/// A display window in HU (or any unit): values `center ± width / 2` map to black..white.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisplayWindow {
    pub center: f32,
    pub width: f32,
}

impl DisplayWindow {
    /// Lung window (level −600, width 1500).
    pub const LUNG: DisplayWindow = DisplayWindow {
        center: -600.0,
        width: 1500.0,
    };
    /// Mediastinal (soft-tissue) window (level 40, width 400).
    pub const MEDIASTINUM: DisplayWindow = DisplayWindow {
        center: 40.0,
        width: 400.0,
    };
    /// CT angiography window (level 100, width 700): contrast-filled vessels not saturated.
    pub const ANGIO: DisplayWindow = DisplayWindow {
        center: 100.0,
        width: 700.0,
    };

    /// The window showing `[lo, hi]`.
    pub fn range(lo: f32, hi: f32) -> Self {
        Self {
            center: 0.5 * (lo + hi),
            width: (hi - lo).max(f32::EPSILON),
        }
    }

    /// Grey level (0..=255) of a value.
    pub fn gray(&self, v: f32) -> u8 {
        let t = (v - (self.center - 0.5 * self.width)) / self.width;
        if t.is_nan() {
            return 0;
        }
        (t.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// A regular grid of cells with padding between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    pub rows: usize,
    pub cols: usize,
    pub cell_width: usize,
    pub cell_height: usize,
    pub pad: usize,
}

impl TileGrid {
    /// A canvas just large enough for the grid, filled with grey level `background`.
    pub fn canvas(&self, background: u8) -> Canvas {
        Canvas::new(
            self.cols * self.cell_width + (self.cols + 1) * self.pad,
            self.rows * self.cell_height + (self.rows + 1) * self.pad,
            [background; 3],
        )
    }

    /// Top-left pixel of cell `(row, col)`.
    pub fn cell(&self, row: usize, col: usize) -> (i64, i64) {
        (
            (self.pad + col * (self.cell_width + self.pad)) as i64,
            (self.pad + row * (self.cell_height + self.pad)) as i64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn window_maps_level_and_width() {
        let w = DisplayWindow::MEDIASTINUM;
        assert_eq!(w.gray(-160.0), 0);
        assert_eq!(w.gray(240.0), 255);
        assert_eq!(w.gray(40.0), 128);
        assert_eq!(w.gray(f32::NAN), 0);
        assert_eq!(
            DisplayWindow::range(0.0, 10.0),
            DisplayWindow {
                center: 5.0,
                width: 10.0
            }
        );
    }

    #[test]
    fn draw_places_and_scales_tiles() {
        let grid = TileGrid {
            rows: 1,
            cols: 2,
            cell_width: 4,
            cell_height: 4,
            pad: 1,
        };
        let mut c = grid.canvas(7);
        assert_eq!((c.width(), c.height()), (11, 6));
        let img = array![[0.0f32, 0.0], [1.0, 1.0]];
        let (x, y) = grid.cell(0, 1);
        c.draw(x, y, img.view(), DisplayWindow::range(0.0, 1.0), 4, 4);
        assert_eq!((x, y), (6, 1));
        let px = |x, y| c.get(x, y).unwrap()[0];
        assert_eq!(px(6, 1), 0); // top row black
        assert_eq!(px(9, 4), 255); // bottom row white
        assert_eq!(px(0, 0), 7); // padding untouched
        assert_eq!(px(2, 2), 7); // other cell untouched
                                 // Halfway between the rows (bilinear, align corners = false): rows 1 and 2 of 4
                                 // sample at 0.25 and 0.75 of the way.
        assert_eq!(px(7, 2), DisplayWindow::range(0.0, 1.0).gray(0.25));
        assert_eq!(px(7, 3), DisplayWindow::range(0.0, 1.0).gray(0.75));
    }
}
