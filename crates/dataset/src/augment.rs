//! Data augmentation for paired 2D training slices.
//!
//! A training example is an NCCT slice, its CTPA slice and their lung and body masks, all on
//! one pixel grid. Augmentation must keep them on one grid, so every geometric change (crop,
//! flips, rotation, scaling) is **one** affine map applied to all four arrays: images are
//! resampled bilinearly, masks with nearest neighbour (a mask stays binary). Only the NCCT
//! gets intensity jitter: the CTPA is the target, and jittering it would teach the network to
//! reproduce noise.
//!
//! The crop and the geometric transform are fused into a single resampling ("for each output
//! pixel, where does it come from?"), so an image is interpolated at most once and a crop
//! without rotation or scaling copies pixels exactly.
//!
//! Everything is driven by a caller-supplied RNG, so a sample is a pure function of its seed
//! (see [`crate::sampler`], which derives one RNG per sample from the run seed and the
//! sample's index).

use ndarray::Array2;
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Augmentation settings. `Default` is what training uses unless the config says otherwise.
/// Setting a magnitude to 0 (or a probability to 0) switches that augmentation off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Master switch; `false` gives plain random crops. Default: `true`.
    pub enabled: bool,
    /// Probability of mirroring left-right (along x). Default: 0.5.
    pub flip_x_prob: f64,
    /// Probability of mirroring anterior-posterior (along y). Default: 0.0 (a chest is never
    /// upside down in an axial slice).
    pub flip_y_prob: f64,
    /// Rotations are drawn uniformly in `[-rotate_deg, rotate_deg]` degrees. Default: 10.
    pub rotate_deg: f64,
    /// Isotropic scale drawn uniformly in `[1 - scale, 1 + scale]`. Default: 0.1.
    pub scale: f64,
    /// NCCT only: multiplicative contrast drawn in `[1 - c, 1 + c]` about the slice's
    /// centre value 0. Default: 0.05.
    pub ncct_contrast: f64,
    /// NCCT only: additive brightness drawn in `[-b, b]` (normalised units, 2.0 = the whole HU
    /// window). Default: 0.02.
    pub ncct_brightness: f64,
    /// NCCT only: standard deviation of added Gaussian noise (normalised units). Default: 0.01
    /// (about 10 HU for a 2000 HU window).
    pub ncct_noise_std: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            flip_x_prob: 0.5,
            flip_y_prob: 0.0,
            rotate_deg: 10.0,
            scale: 0.1,
            ncct_contrast: 0.05,
            ncct_brightness: 0.02,
            ncct_noise_std: 0.01,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all (validation, overfitting tests).
    pub fn none() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Whether training mirrors along x (left-right) and along y (anterior-posterior): what
    /// test-time mirroring (`[inference] tta = "auto"`) mirrors.
    pub fn mirrors(&self) -> [bool; 2] {
        [
            self.enabled && self.flip_x_prob > 0.0,
            self.enabled && self.flip_y_prob > 0.0,
        ]
    }

    /// Checks ranges; returns a message naming the field that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("flip_x_prob", self.flip_x_prob),
            ("flip_y_prob", self.flip_y_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("augment.{name} must lie in [0, 1], got {p}"));
            }
        }
        if !(0.0..=90.0).contains(&self.rotate_deg) {
            return Err(format!(
                "augment.rotate_deg must lie in [0, 90], got {}",
                self.rotate_deg
            ));
        }
        if !(0.0..0.9).contains(&self.scale) {
            return Err(format!(
                "augment.scale must lie in [0, 0.9), got {}",
                self.scale
            ));
        }
        for (name, v) in [
            ("ncct_contrast", self.ncct_contrast),
            ("ncct_brightness", self.ncct_brightness),
            ("ncct_noise_std", self.ncct_noise_std),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("augment.{name} must be finite and >= 0, got {v}"));
            }
        }
        Ok(())
    }
}

/// Co-registered slices of one training example, all `[height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlicePair {
    /// Input, normalised intensities (see the prepared dataset's window).
    pub ncct: Array2<f32>,
    /// Target, normalised intensities.
    pub ctpa: Array2<f32>,
    /// Lung mask, 0 or 1.
    pub lung: Array2<u8>,
    /// Body mask, 0 or 1.
    pub body: Array2<u8>,
    /// 2.5D input: the NCCT slices around `ncct`, `z - k ..= z - 1` then `z + 1 ..= z + k`
    /// (clamped at the volume's ends), normalised like it; empty for one-slice input.
    pub context: Vec<Array2<f32>>,
}

impl SlicePair {
    /// A one-slice example (no 2.5D context).
    pub fn new(ncct: Array2<f32>, ctpa: Array2<f32>, lung: Array2<u8>, body: Array2<u8>) -> Self {
        Self {
            ncct,
            ctpa,
            lung,
            body,
            context: Vec::new(),
        }
    }

    /// `(height, width)`, checking that all arrays share it.
    pub fn dim(&self) -> Result<(usize, usize), String> {
        let d = self.ncct.dim();
        if self.ctpa.dim() != d
            || self.lung.dim() != d
            || self.body.dim() != d
            || self.context.iter().any(|c| c.dim() != d)
        {
            return Err(format!(
                "slice arrays disagree in shape: ncct {:?}, ctpa {:?}, lung {:?}, body {:?}, \
                 context {:?}",
                d,
                self.ctpa.dim(),
                self.lung.dim(),
                self.body.dim(),
                self.context.iter().map(|c| c.dim()).collect::<Vec<_>>()
            ));
        }
        Ok(d)
    }

    /// The NCCT input as `2k + 1` channels, `z - k ..= z + k` (the slice itself in the
    /// middle); one channel without context.
    pub fn ncct_channels(&self) -> Vec<&Array2<f32>> {
        let k = self.context.len() / 2;
        let mut out: Vec<&Array2<f32>> = self.context[..k].iter().collect();
        out.push(&self.ncct);
        out.extend(&self.context[k..]);
        out
    }
}

/// A 2D affine map from output pixel coordinates to source pixel coordinates:
/// `src = centre_src + m * (out - centre_out)`, coordinates `(y, x)` in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine2 {
    /// Row-major 2x2 matrix acting on `(y, x)`.
    pub m: [[f64; 2]; 2],
    /// Source point that the output centre maps to, `(y, x)`.
    pub centre_src: [f64; 2],
    /// Centre of the output grid, `(y, x)`.
    pub centre_out: [f64; 2],
}

impl Affine2 {
    /// Source coordinates `(y, x)` of output pixel `(r, c)`.
    #[inline]
    pub fn apply(&self, r: f64, c: f64) -> (f64, f64) {
        let dy = r - self.centre_out[0];
        let dx = c - self.centre_out[1];
        (
            self.centre_src[0] + self.m[0][0] * dy + self.m[0][1] * dx,
            self.centre_src[1] + self.m[1][0] * dy + self.m[1][1] * dx,
        )
    }

    /// Whether the map is a pure translation by whole pixels with optional flips (no
    /// interpolation needed).
    fn is_pixel_exact(&self) -> bool {
        let integral = |v: f64| (v - v.round()).abs() < 1e-9;
        let m = self.m;
        let axis_flips =
            m[0][1] == 0.0 && m[1][0] == 0.0 && m[0][0].abs() == 1.0 && m[1][1].abs() == 1.0;
        axis_flips
            && integral(self.centre_src[0] - self.centre_out[0])
            && integral(self.centre_src[1] - self.centre_out[1])
    }
}

/// The geometric part of one augmentation draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeometricDraw {
    pub flip_x: bool,
    pub flip_y: bool,
    /// Rotation of the content, radians (positive turns it clockwise as displayed, with y
    /// pointing down).
    pub angle: f64,
    /// Content magnification (> 1 zooms in).
    pub scale: f64,
}

impl GeometricDraw {
    pub const IDENTITY: Self = Self {
        flip_x: false,
        flip_y: false,
        angle: 0.0,
        scale: 1.0,
    };

    /// Draws flips, rotation and scale from `cfg` (identity when augmentation is disabled).
    pub fn sample(cfg: &AugmentConfig, rng: &mut impl Rng) -> Self {
        if !cfg.enabled {
            return Self::IDENTITY;
        }
        // Always draw every variable, so that changing one probability does not shift the
        // random stream of the others.
        let fx: f64 = rng.gen();
        let fy: f64 = rng.gen();
        let a: f64 = rng.gen_range(-1.0..=1.0);
        let s: f64 = rng.gen_range(-1.0..=1.0);
        Self {
            flip_x: fx < cfg.flip_x_prob,
            flip_y: fy < cfg.flip_y_prob,
            angle: a * cfg.rotate_deg.to_radians(),
            scale: 1.0 + s * cfg.scale,
        }
    }

    /// The output-to-source matrix: the inverse of `rotate(angle) * scale * flips`.
    pub fn inverse_matrix(&self) -> [[f64; 2]; 2] {
        // Forward: out = R(angle) * S * F * src. Inverse: src = F * S^-1 * R(-angle) * out
        // (F is its own inverse). Coordinates are (y, x).
        let (s, c) = (-self.angle).sin_cos();
        // R(-angle) acting on (y, x): x' = c x - s y, y' = s x + c y.
        let r = [[c, s], [-s, c]];
        let k = 1.0 / self.scale;
        let fy = if self.flip_y { -1.0 } else { 1.0 };
        let fx = if self.flip_x { -1.0 } else { 1.0 };
        [
            [fy * k * r[0][0], fy * k * r[0][1]],
            [fx * k * r[1][0], fx * k * r[1][1]],
        ]
    }
}

/// Resamples `src` on the output grid `out_dim` through `map`, bilinearly; source pixels
/// outside `src` read as `fill`.
pub fn warp_bilinear(
    src: &Array2<f32>,
    map: &Affine2,
    out_dim: (usize, usize),
    fill: f32,
) -> Array2<f32> {
    let (h, w) = src.dim();
    let exact = map.is_pixel_exact();
    Array2::from_shape_fn(out_dim, |(r, c)| {
        let (y, x) = map.apply(r as f64, c as f64);
        if exact {
            return fetch(src, y.round() as i64, x.round() as i64, h, w, fill);
        }
        let y0 = y.floor();
        let x0 = x.floor();
        let ty = (y - y0) as f32;
        let tx = (x - x0) as f32;
        let (y0, x0) = (y0 as i64, x0 as i64);
        let v00 = fetch(src, y0, x0, h, w, fill);
        let v01 = fetch(src, y0, x0 + 1, h, w, fill);
        let v10 = fetch(src, y0 + 1, x0, h, w, fill);
        let v11 = fetch(src, y0 + 1, x0 + 1, h, w, fill);
        let top = v00 + (v01 - v00) * tx;
        let bottom = v10 + (v11 - v10) * tx;
        top + (bottom - top) * ty
    })
}

/// Resamples a mask through `map` with nearest neighbour; outside reads as 0.
pub fn warp_nearest(src: &Array2<u8>, map: &Affine2, out_dim: (usize, usize)) -> Array2<u8> {
    let (h, w) = src.dim();
    Array2::from_shape_fn(out_dim, |(r, c)| {
        let (y, x) = map.apply(r as f64, c as f64);
        fetch(src, y.round() as i64, x.round() as i64, h, w, 0)
    })
}

#[inline]
fn fetch<T: Copy>(src: &Array2<T>, y: i64, x: i64, h: usize, w: usize, fill: T) -> T {
    if y < 0 || x < 0 || y >= h as i64 || x >= w as i64 {
        fill
    } else {
        src[[y as usize, x as usize]]
    }
}

/// Draws a crop of `crop` x `crop` pixels and an augmentation from `rng`, and applies both to
/// all four arrays of `pair` with one shared map. `fill` is the image value outside the slice
/// (use the normalised value of air, -1).
///
/// The crop's top-left corner is uniform over the positions that keep it inside the slice;
/// a slice smaller than `crop` along an axis is centred and padded along it.
pub fn augment_crop(
    pair: &SlicePair,
    crop: usize,
    cfg: &AugmentConfig,
    fill: f32,
    rng: &mut impl Rng,
) -> Result<SlicePair, String> {
    let (h, w) = pair.dim()?;
    if crop == 0 {
        return Err("crop size must be positive".into());
    }
    // Draw order is fixed: crop position, geometry, intensity.
    let top = if h > crop {
        rng.gen_range(0..=h - crop) as f64
    } else {
        -(((crop - h) / 2) as f64)
    };
    let left = if w > crop {
        rng.gen_range(0..=w - crop) as f64
    } else {
        -(((crop - w) / 2) as f64)
    };
    let geo = GeometricDraw::sample(cfg, rng);
    let half = (crop as f64 - 1.0) / 2.0;
    let map = Affine2 {
        m: geo.inverse_matrix(),
        centre_src: [top + half, left + half],
        centre_out: [half, half],
    };
    let out = (crop, crop);
    let mut ncct = warp_bilinear(&pair.ncct, &map, out, fill);
    let ctpa = warp_bilinear(&pair.ctpa, &map, out, fill);
    let lung = warp_nearest(&pair.lung, &map, out);
    let body = warp_nearest(&pair.body, &map, out);
    let mut context: Vec<Array2<f32>> = pair
        .context
        .iter()
        .map(|c| warp_bilinear(c, &map, out, fill))
        .collect();
    jitter_stack(&mut ncct, &mut context, cfg, rng);
    tracing::trace!(top, left, ?geo, "augmented crop");
    Ok(SlicePair {
        ncct,
        ctpa,
        lung,
        body,
        context,
    })
}

/// NCCT intensity jitter: `x * contrast + brightness + noise`. A no-op when disabled, but the
/// contrast and brightness are drawn regardless so the RNG stream does not depend on `enabled`.
pub fn jitter_intensity(img: &mut Array2<f32>, cfg: &AugmentConfig, rng: &mut impl Rng) {
    jitter_stack(img, &mut [], cfg, rng);
}

/// [`jitter_intensity`] of a slice and its 2.5D context: one contrast and brightness for all
/// (the scan's), the noise drawn per slice; the slice itself draws exactly what it would alone.
pub fn jitter_stack(
    img: &mut Array2<f32>,
    context: &mut [Array2<f32>],
    cfg: &AugmentConfig,
    rng: &mut impl Rng,
) {
    let c: f64 = rng.gen_range(-1.0..=1.0);
    let b: f64 = rng.gen_range(-1.0..=1.0);
    if !cfg.enabled {
        return;
    }
    let contrast = (1.0 + c * cfg.ncct_contrast) as f32;
    let brightness = (b * cfg.ncct_brightness) as f32;
    // Normal::new only fails for a negative or non-finite std, which validate() rejects;
    // fall back to no noise rather than panicking if a caller skipped validation.
    let noise = (cfg.ncct_noise_std > 0.0)
        .then(|| Normal::new(0.0f32, cfg.ncct_noise_std as f32).ok())
        .flatten();
    for a in std::iter::once(img).chain(context.iter_mut()) {
        match &noise {
            Some(n) => a.mapv_inplace(|v| v * contrast + brightness + n.sample(rng)),
            None => a.mapv_inplace(|v| v * contrast + brightness),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(h: usize, w: usize) -> Array2<f32> {
        Array2::from_shape_fn((h, w), |(y, x)| (y * w + x) as f32)
    }

    #[test]
    fn identity_map_copies_exactly() {
        let src = ramp(5, 7);
        let map = Affine2 {
            m: GeometricDraw::IDENTITY.inverse_matrix(),
            centre_src: [2.0, 3.0],
            centre_out: [2.0, 3.0],
        };
        assert_eq!(warp_bilinear(&src, &map, (5, 7), -1.0), src);
    }

    #[test]
    fn flip_x_mirrors_columns() {
        let src = ramp(4, 6);
        let geo = GeometricDraw {
            flip_x: true,
            ..GeometricDraw::IDENTITY
        };
        let map = Affine2 {
            m: geo.inverse_matrix(),
            centre_src: [1.5, 2.5],
            centre_out: [1.5, 2.5],
        };
        let out = warp_bilinear(&src, &map, (4, 6), -1.0);
        for y in 0..4 {
            for x in 0..6 {
                assert_eq!(out[[y, x]], src[[y, 5 - x]]);
            }
        }
    }

    #[test]
    fn quarter_turn_is_a_transpose_with_flip() {
        // A quarter turn clockwise as displayed (y down): the top edge moves to the right,
        // out[y][x] = src[n-1-x][y].
        let n = 5;
        let src = ramp(n, n);
        let geo = GeometricDraw {
            angle: std::f64::consts::FRAC_PI_2,
            ..GeometricDraw::IDENTITY
        };
        let c = (n as f64 - 1.0) / 2.0;
        let map = Affine2 {
            m: geo.inverse_matrix(),
            centre_src: [c, c],
            centre_out: [c, c],
        };
        let out = warp_bilinear(&src, &map, (n, n), -1.0);
        for y in 0..n {
            for x in 0..n {
                let want = src[[n - 1 - x, y]];
                assert!(
                    (out[[y, x]] - want).abs() < 1e-3,
                    "({y},{x}): {} vs {want}",
                    out[[y, x]]
                );
            }
        }
    }

    #[test]
    fn bilinear_interpolates_half_pixel_shift_and_fills_outside() {
        let src = ramp(3, 3);
        let map = Affine2 {
            m: [[1.0, 0.0], [0.0, 1.0]],
            centre_src: [1.0, 1.5],
            centre_out: [1.0, 1.0],
        };
        let out = warp_bilinear(&src, &map, (3, 3), -7.0);
        assert_eq!(out[[0, 0]], 0.5);
        assert_eq!(out[[1, 1]], 4.5);
        // The last column reads x = 2.5: half the pixel at x = 2, half the fill.
        assert_eq!(out[[0, 2]], (2.0 + -7.0) / 2.0);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cfg = AugmentConfig {
            flip_x_prob: 1.5,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("flip_x_prob"));
        let cfg = AugmentConfig {
            ncct_noise_std: -1.0,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("ncct_noise_std"));
        assert!(AugmentConfig::default().validate().is_ok());
    }

    #[test]
    fn disabled_augmentation_is_a_plain_crop() {
        let pair = SlicePair::new(
            ramp(10, 12),
            ramp(10, 12) * 2.0,
            Array2::from_shape_fn((10, 12), |(y, _)| u8::from(y > 4)),
            Array2::ones((10, 12)),
        );
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let out = augment_crop(&pair, 8, &AugmentConfig::none(), -1.0, &mut rng).unwrap();
        // Find the crop offset from the first pixel of the ramp, then check every pixel.
        let v = out.ncct[[0, 0]] as usize;
        let (top, left) = (v / 12, v % 12);
        for y in 0..8 {
            for x in 0..8 {
                assert_eq!(out.ncct[[y, x]], pair.ncct[[top + y, left + x]]);
                assert_eq!(out.ctpa[[y, x]], pair.ctpa[[top + y, left + x]]);
                assert_eq!(out.lung[[y, x]], pair.lung[[top + y, left + x]]);
            }
        }
    }
}
