//! Grayscale PNG montages: tiles of CT slices shown with a window/level, laid out on a grid.
//!
//! Used by `ncct2ctpa synth --preview` for phantom pairs and by the trainer for sample grids.
//! Tiles are resampled bilinearly to the requested size, so slices with anisotropic voxels
//! (a coronal cut through 5 mm slices) can be shown at their physical aspect ratio.

use ndarray::ArrayView2;
use std::path::Path;
use volume::io::atomic::write_atomic;

/// A display window in HU (or any unit): values `center ± width / 2` map to black..white.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f32,
    pub width: f32,
}

impl Window {
    /// Lung window (level −600, width 1500).
    pub const LUNG: Window = Window {
        center: -600.0,
        width: 1500.0,
    };
    /// Mediastinal (soft-tissue) window (level 40, width 400).
    pub const MEDIASTINUM: Window = Window {
        center: 40.0,
        width: 400.0,
    };
    /// CT angiography window (level 100, width 700): contrast-filled vessels not saturated.
    pub const ANGIO: Window = Window {
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

/// An 8-bit grayscale image being composed.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `background`.
    pub fn new(width: usize, height: usize, background: u8) -> Self {
        Self {
            width,
            height,
            pixels: vec![background; width * height],
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }
    pub fn height(&self) -> usize {
        self.height
    }
    /// Row-major pixels.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }
    pub fn pixel(&self, x: usize, y: usize) -> u8 {
        self.pixels[y * self.width + x]
    }

    /// Draws `image` (`[rows, cols]`, row 0 at the top) through `window`, resampled
    /// bilinearly to `w` x `h` pixels with its top-left corner at `(x0, y0)`. Pixels falling
    /// outside the canvas are clipped.
    pub fn draw(
        &mut self,
        x0: usize,
        y0: usize,
        image: ArrayView2<f32>,
        window: Window,
        w: usize,
        h: usize,
    ) {
        let (rows, cols) = image.dim();
        if rows == 0 || cols == 0 || w == 0 || h == 0 {
            return;
        }
        for py in 0..h {
            let y = y0 + py;
            if y >= self.height {
                break;
            }
            // Pixel centres map onto sample centres (align corners = false).
            let sy =
                ((py as f32 + 0.5) * rows as f32 / h as f32 - 0.5).clamp(0.0, (rows - 1) as f32);
            let r0 = sy.floor() as usize;
            let r1 = (r0 + 1).min(rows - 1);
            let fy = sy - r0 as f32;
            for px in 0..w {
                let x = x0 + px;
                if x >= self.width {
                    break;
                }
                let sx = ((px as f32 + 0.5) * cols as f32 / w as f32 - 0.5)
                    .clamp(0.0, (cols - 1) as f32);
                let c0 = sx.floor() as usize;
                let c1 = (c0 + 1).min(cols - 1);
                let fx = sx - c0 as f32;
                let top = image[[r0, c0]] * (1.0 - fx) + image[[r0, c1]] * fx;
                let bottom = image[[r1, c0]] * (1.0 - fx) + image[[r1, c1]] * fx;
                self.pixels[y * self.width + x] = window.gray(top * (1.0 - fy) + bottom * fy);
            }
        }
    }

    /// Encodes the canvas as an 8-bit grayscale PNG and writes it atomically.
    pub fn save_png(&self, path: &Path) -> volume::Result<()> {
        write_atomic(path, |w| {
            let mut enc = png::Encoder::new(w, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            let to_io = |e: png::EncodingError| std::io::Error::other(e.to_string());
            let mut writer = enc.write_header().map_err(to_io)?;
            writer.write_image_data(&self.pixels).map_err(to_io)?;
            writer.finish().map_err(to_io)
        })?;
        tracing::debug!(path = %path.display(), self.width, self.height, "PNG written");
        Ok(())
    }
}

/// A regular grid of cells with padding between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub rows: usize,
    pub cols: usize,
    pub cell_width: usize,
    pub cell_height: usize,
    pub pad: usize,
}

impl Grid {
    /// A canvas just large enough for the grid.
    pub fn canvas(&self, background: u8) -> Canvas {
        Canvas::new(
            self.cols * self.cell_width + (self.cols + 1) * self.pad,
            self.rows * self.cell_height + (self.rows + 1) * self.pad,
            background,
        )
    }

    /// Top-left pixel of cell `(row, col)`.
    pub fn cell(&self, row: usize, col: usize) -> (usize, usize) {
        (
            self.pad + col * (self.cell_width + self.pad),
            self.pad + row * (self.cell_height + self.pad),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn window_maps_level_and_width() {
        let w = Window::MEDIASTINUM;
        assert_eq!(w.gray(-160.0), 0);
        assert_eq!(w.gray(240.0), 255);
        assert_eq!(w.gray(40.0), 128);
        assert_eq!(w.gray(f32::NAN), 0);
        assert_eq!(
            Window::range(0.0, 10.0),
            Window {
                center: 5.0,
                width: 10.0
            }
        );
    }

    #[test]
    fn draw_places_and_scales_tiles() {
        let grid = Grid {
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
        c.draw(x, y, img.view(), Window::range(0.0, 1.0), 4, 4);
        assert_eq!((x, y), (6, 1));
        assert_eq!(c.pixel(6, 1), 0); // top row black
        assert_eq!(c.pixel(9, 4), 255); // bottom row white
        assert_eq!(c.pixel(0, 0), 7); // padding untouched
        assert_eq!(c.pixel(2, 2), 7); // other cell untouched
    }

    #[test]
    fn png_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Canvas::new(3, 2, 0);
        c.draw(
            0,
            0,
            array![[0.0f32, 0.5, 1.0], [1.0, 0.5, 0.0]].view(),
            Window::range(0.0, 1.0),
            3,
            2,
        );
        let path = dir.path().join("a.png");
        c.save_png(&path).unwrap();
        let dec = png::Decoder::new(std::fs::File::open(&path).unwrap());
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..6], c.pixels());
    }
}
