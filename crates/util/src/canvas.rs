//! A small RGB raster for every figure the toolkit writes (the phantom previews of `synth
//! --preview`, the trainer's sample grids and curves): pixels, lines, boxes, CT tiles shown
//! through a display window and resampled bilinearly, and labels in a built-in 5x7 bitmap
//! font, saved as PNG atomically.
//!
//! Why our own: the figures need only lines and labels, and plotting crates either pull a font
//! stack (system fonts, FreeType) that a fresh headless machine may lack, or cannot draw text
//! at all. A 5x7 font covers the digits, capitals and the punctuation of axis labels.

use crate::atomic::{write_atomic, WriteError};
use crate::preview::DisplayWindow;
use ndarray::ArrayView2;
use std::path::Path;

/// An RGB colour.
pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GREY: Rgb = [160, 160, 160];
pub const LIGHT_GREY: Rgb = [225, 225, 225];

/// A categorical palette (colour-blind friendly, after Okabe & Ito).
pub const PALETTE: [Rgb; 7] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
    [86, 180, 233],
    [120, 120, 120],
];

/// Glyph height in pixels (at scale 1); each glyph is 5 wide plus 1 of spacing.
pub const GLYPH_H: usize = 7;
pub const GLYPH_ADVANCE: usize = 6;

/// An RGB image, row-major, `(x, y)` with y pointing down.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<Rgb>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
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

    /// The pixel at `(x, y)`, `None` outside.
    pub fn get(&self, x: usize, y: usize) -> Option<Rgb> {
        (x < self.width && y < self.height).then(|| self.pixels[y * self.width + x])
    }

    /// Sets a pixel; coordinates outside the canvas are ignored (clipping).
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            self.pixels[y as usize * self.width + x as usize] = c;
        }
    }

    pub fn fill_rect(&mut self, x: i64, y: i64, w: usize, h: usize, c: Rgb) {
        for yy in y..y + h as i64 {
            for xx in x..x + w as i64 {
                self.set(xx, yy, c);
            }
        }
    }

    pub fn rect(&mut self, x: i64, y: i64, w: usize, h: usize, c: Rgb) {
        let (x1, y1) = (x + w as i64 - 1, y + h as i64 - 1);
        self.line(x, y, x1, y, c);
        self.line(x, y1, x1, y1, c);
        self.line(x, y, x, y1, c);
        self.line(x1, y, x1, y1, c);
    }

    /// A 1-pixel line (Bresenham), clipped.
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        self.line_pattern(x0, y0, x1, y1, c, u32::MAX);
    }

    /// A dashed line: pixel `i` of the line is drawn when bit `i % 32` of `pattern` is set.
    pub fn line_pattern(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb, pattern: u32) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let mut i = 0u32;
        loop {
            if pattern & (1 << (i % 32)) != 0 {
                self.set(x, y, c);
            }
            i += 1;
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws `img` (`[rows, cols]`, row 0 at the top) at its own size with its top-left at
    /// `(x, y)`, mapping `[lo, hi]` linearly to black..white (values outside are clipped; NaN
    /// draws red so it cannot go unnoticed).
    pub fn gray_tile(&mut self, x: i64, y: i64, img: ArrayView2<'_, f32>, lo: f32, hi: f32) {
        let (rows, cols) = img.dim();
        self.draw(x, y, img, DisplayWindow::range(lo, hi), cols, rows);
    }

    /// Draws `image` (`[rows, cols]`, row 0 at the top) through `window`, resampled
    /// bilinearly to `w` x `h` pixels with its top-left corner at `(x0, y0)` (so slices with
    /// anisotropic voxels, a coronal cut through 5 mm slices, show at their physical aspect
    /// ratio). Pixels falling outside the canvas are clipped; NaN draws red.
    pub fn draw(
        &mut self,
        x0: i64,
        y0: i64,
        image: ArrayView2<'_, f32>,
        window: DisplayWindow,
        w: usize,
        h: usize,
    ) {
        let (rows, cols) = image.dim();
        if rows == 0 || cols == 0 || w == 0 || h == 0 {
            return;
        }
        for py in 0..h {
            // Pixel centres map onto sample centres (align corners = false): at w = cols and
            // h = rows every pixel is its sample exactly.
            let sy =
                ((py as f32 + 0.5) * rows as f32 / h as f32 - 0.5).clamp(0.0, (rows - 1) as f32);
            let r0 = sy.floor() as usize;
            let r1 = (r0 + 1).min(rows - 1);
            let fy = sy - r0 as f32;
            for px in 0..w {
                let sx = ((px as f32 + 0.5) * cols as f32 / w as f32 - 0.5)
                    .clamp(0.0, (cols - 1) as f32);
                let c0 = sx.floor() as usize;
                let c1 = (c0 + 1).min(cols - 1);
                let fx = sx - c0 as f32;
                let top = image[[r0, c0]] * (1.0 - fx) + image[[r0, c1]] * fx;
                let bottom = image[[r1, c0]] * (1.0 - fx) + image[[r1, c1]] * fx;
                let v = top * (1.0 - fy) + bottom * fy;
                let c = if v.is_nan() {
                    [255, 0, 0]
                } else {
                    let g = window.gray(v);
                    [g, g, g]
                };
                self.set(x0 + px as i64, y0 + py as i64, c);
            }
        }
    }

    /// Text at `(x, y)` (top-left), each font pixel drawn as a `scale` x `scale` block. Lower
    /// case prints as upper case; characters without a glyph print as a hollow box.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: usize) {
        let scale = scale.max(1);
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + (i * GLYPH_ADVANCE * scale) as i64;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.fill_rect(
                            gx + (col * scale) as i64,
                            y + (r * scale) as i64,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
        }
    }

    /// Width in pixels of `s` drawn at `scale`.
    pub fn text_width(s: &str, scale: usize) -> usize {
        s.chars().count() * GLYPH_ADVANCE * scale.max(1)
    }

    /// Encodes the canvas as an 8-bit RGB PNG.
    pub fn encode_png(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut enc = png::Encoder::new(out, self.width as u32, self.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(std::io::Error::other)?;
        let data: Vec<u8> = self.pixels.iter().flatten().copied().collect();
        w.write_image_data(&data).map_err(std::io::Error::other)?;
        w.finish().map_err(std::io::Error::other)
    }

    /// Writes the PNG atomically (temporary name, then rename).
    pub fn save_png(&self, path: &Path) -> Result<(), WriteError> {
        write_atomic(path, |w| self.encode_png(w))?;
        tracing::debug!(path = %path.display(), self.width, self.height, "PNG written");
        Ok(())
    }
}

/// The 7 rows of a glyph, 5 bits each (bit 4 = leftmost column).
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '|' => [0x04; 7],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_are_distinct_and_fit_five_columns() {
        let chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.,-+=:/()[]|_%<>";
        let mut seen = std::collections::HashSet::new();
        for ch in chars.chars() {
            let g = glyph(ch);
            assert!(g.iter().all(|&r| r < 0x20), "{ch}");
            assert!(seen.insert(g), "glyph of {ch:?} duplicates another");
        }
        assert_eq!(glyph('a'), glyph('A'));
    }

    #[test]
    fn text_draws_inside_its_box_only() {
        let mut c = Canvas::new(40, 20, WHITE);
        c.text(2, 3, "H1", BLACK, 2);
        let w = Canvas::text_width("H1", 2);
        let mut ink = 0;
        for y in 0..20 {
            for x in 0..40 {
                if c.get(x, y) == Some(BLACK) {
                    ink += 1;
                    assert!(
                        (2..2 + w).contains(&x) && (3..3 + 14).contains(&y),
                        "({x},{y})"
                    );
                }
            }
        }
        // H has 2*7+3 = 17 set cells, 1 has 4+... count exactly from the glyphs.
        let cells: u32 = glyph('H')
            .iter()
            .chain(glyph('1').iter())
            .map(|r| r.count_ones())
            .sum();
        assert_eq!(ink, cells as usize * 4);
    }

    #[test]
    fn lines_reach_both_ends_and_clip() {
        let mut c = Canvas::new(10, 10, WHITE);
        c.line(-5, 2, 20, 2, BLACK);
        assert!((0..10).all(|x| c.get(x, 2) == Some(BLACK)));
        c.line(1, 1, 8, 6, PALETTE[0]);
        assert_eq!(c.get(1, 1), Some(PALETTE[0]));
        assert_eq!(c.get(8, 6), Some(PALETTE[0]));
    }

    #[test]
    fn png_round_trips() {
        let mut c = Canvas::new(7, 5, WHITE);
        c.set(3, 2, [10, 20, 30]);
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.png");
        c.save_png(&p).unwrap();
        let dec = png::Decoder::new(std::fs::File::open(&p).unwrap());
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (7, 5));
        assert_eq!(&buf[(2 * 7 + 3) * 3..(2 * 7 + 3) * 3 + 3], &[10, 20, 30]);
        assert_eq!(&buf[0..3], &[255, 255, 255]);
    }
}
