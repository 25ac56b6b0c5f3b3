//! Random textures and filters of the phantom: procedural value noise for anatomy that moves
//! with the tissue (lung parenchyma, fat, marrow), Gaussian blur for the scanner's point-spread
//! function, and the correlated Gaussian noise of a CT acquisition.
//!
//! Everything is a pure function of a seed (and of a slice index where slices run in parallel),
//! so the output does not depend on how rayon schedules the work.

use ndarray::{Array3, ArrayViewMut1, Axis, Zip};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// SplitMix64: a cheap, well-mixed hash used to derive per-stream seeds and lattice values.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives an independent seed for a named stream (`stream`) of a parent seed.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    mix64(seed ^ mix64(stream.wrapping_add(0x5851_F42D_4C95_7F2D)))
}

/// Smooth 3D value noise: random values on an integer lattice, blended with a quintic fade.
/// Returns values in about `[-1, 1]`, continuous with continuous first derivatives.
#[derive(Debug, Clone, Copy)]
pub struct ValueNoise {
    seed: u64,
}

impl ValueNoise {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    fn lattice(&self, x: i64, y: i64, z: i64) -> f64 {
        let h = mix64(
            self.seed
                ^ mix64(x as u64)
                ^ mix64((y as u64).wrapping_mul(0x1000_0000_01B3))
                ^ mix64((z as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)),
        );
        // Top 53 bits to [0, 1), then to [-1, 1).
        (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// Noise at a point given in lattice units.
    pub fn at(&self, p: [f64; 3]) -> f64 {
        let fade = |t: f64| t * t * t * (t * (t * 6.0 - 15.0) + 10.0);
        let (fx, fy, fz) = (p[0].floor(), p[1].floor(), p[2].floor());
        let (ix, iy, iz) = (fx as i64, fy as i64, fz as i64);
        let (tx, ty, tz) = (fade(p[0] - fx), fade(p[1] - fy), fade(p[2] - fz));
        let lerp = |a: f64, b: f64, t: f64| a + (b - a) * t;
        let mut c = [0.0; 4];
        for (n, cn) in c.iter_mut().enumerate() {
            let (dy, dz) = ((n & 1) as i64, (n >> 1) as i64);
            *cn = lerp(
                self.lattice(ix, iy + dy, iz + dz),
                self.lattice(ix + 1, iy + dy, iz + dz),
                tx,
            );
        }
        lerp(lerp(c[0], c[1], ty), lerp(c[2], c[3], ty), tz)
    }

    /// Fractal sum of `octaves` octaves with feature size `scale_mm` at the coarsest octave,
    /// normalised to about `[-1, 1]`.
    pub fn fbm(&self, p_mm: [f64; 3], scale_mm: f64, octaves: u32) -> f64 {
        let mut sum = 0.0;
        let mut norm = 0.0;
        let mut amp = 1.0;
        let mut freq = 1.0 / scale_mm;
        for o in 0..octaves {
            // Offset each octave so lattice points do not line up.
            let off = 17.3 * o as f64;
            sum += amp
                * self.at([
                    p_mm[0] * freq + off,
                    p_mm[1] * freq - off,
                    p_mm[2] * freq + 0.5 * off,
                ]);
            norm += amp;
            amp *= 0.5;
            freq *= 2.0;
        }
        sum / norm
    }
}

/// Normalised 1D Gaussian kernel with standard deviation `sigma` (in samples), radius 3 sigma.
pub fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    if sigma <= 1e-3 {
        return vec![1.0];
    }
    let radius = (3.0 * sigma).ceil() as i64;
    let w: Vec<f64> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| (v / s) as f32).collect()
}

fn convolve_line(mut line: ArrayViewMut1<f32>, kernel: &[f32], buf: &mut Vec<f32>) {
    let n = line.len();
    let r = (kernel.len() / 2) as i64;
    buf.clear();
    buf.extend(line.iter().copied());
    for i in 0..n as i64 {
        let mut acc = 0.0f32;
        for (k, w) in kernel.iter().enumerate() {
            // Edge samples are repeated (border padding).
            let j = (i + k as i64 - r).clamp(0, n as i64 - 1) as usize;
            acc += w * buf[j];
        }
        line[i as usize] = acc;
    }
}

/// Separable Gaussian blur of a `[z, y, x]` array in place; `sigma_zyx` in voxels per axis.
pub fn gaussian_blur(data: &mut Array3<f32>, sigma_zyx: [f64; 3]) {
    for (axis, &sigma) in sigma_zyx.iter().enumerate() {
        let kernel = gaussian_kernel(sigma);
        if kernel.len() == 1 {
            continue;
        }
        // Lines along `axis`, in parallel over the outermost of the other two axes.
        let outer = if axis == 0 { 1 } else { 0 };
        data.axis_iter_mut(Axis(outer))
            .into_par_iter()
            .for_each(|mut plane| {
                let line_axis = if axis > outer { axis - 1 } else { axis };
                let mut buf = Vec::new();
                for line in plane.lanes_mut(Axis(line_axis)) {
                    convolve_line(line, &kernel, &mut buf);
                }
            });
    }
}

/// Adds CT noise of standard deviation `sigma_hu` to `data`: white Gaussian noise smoothed
/// in-plane by a [1, 2, 1] / 4 kernel (the slight correlation of filtered back-projection),
/// rescaled so the final standard deviation is `sigma_hu`. Each slice draws from its own
/// stream (`seed`, slice index), so the result does not depend on thread scheduling.
pub fn add_scanner_noise(data: &mut Array3<f32>, sigma_hu: f32, seed: u64) {
    if sigma_hu <= 0.0 {
        return;
    }
    // Std of a [1,2,1]/4 filtered white signal is sqrt(6)/4 per axis; two axes in-plane.
    let gain = 6.0f32 / 16.0;
    let scale = sigma_hu / gain;
    data.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(z, mut slice)| {
            let (ny, nx) = slice.dim();
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, z as u64));
            let white: Vec<f32> = (0..(ny + 2) * (nx + 2))
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            let w = [0.25f32, 0.5, 0.25];
            let at = |y: usize, x: usize| white[y * (nx + 2) + x];
            Zip::indexed(&mut slice).for_each(|(y, x), v| {
                let mut acc = 0.0;
                for (dy, wy) in w.iter().enumerate() {
                    for (dx, wx) in w.iter().enumerate() {
                        acc += wy * wx * at(y + dy, x + dx);
                    }
                }
                *v += scale * acc;
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_noise_is_deterministic_continuous_and_bounded() {
        let n = ValueNoise::new(7);
        let a = n.fbm([1.3, -4.2, 9.9], 10.0, 3);
        assert_eq!(a, ValueNoise::new(7).fbm([1.3, -4.2, 9.9], 10.0, 3));
        assert_ne!(a, ValueNoise::new(8).fbm([1.3, -4.2, 9.9], 10.0, 3));
        let b = n.fbm([1.3001, -4.2, 9.9], 10.0, 3);
        assert!((a - b).abs() < 1e-3);
        for i in 0..1000 {
            let v = n.at([i as f64 * 0.37, i as f64 * 0.11, -(i as f64) * 0.23]);
            assert!((-1.0..=1.0).contains(&v));
        }
    }

    #[test]
    fn blur_preserves_mean_and_reduces_variance() {
        // Far enough from the edges that the border padding does not matter.
        let mut a = Array3::<f32>::zeros((9, 9, 9));
        a[[4, 4, 4]] = 1.0;
        gaussian_blur(&mut a, [1.0, 1.0, 1.0]);
        assert!((a.sum() - 1.0).abs() < 1e-5);
        // The peak of a separable sigma-1 Gaussian: (1 / sqrt(2 pi))^3.
        assert!((a[[4, 4, 4]] - 0.0635).abs() < 2e-3, "{}", a[[4, 4, 4]]);
        assert!(a[[4, 4, 4]] > a[[4, 4, 5]]);
    }

    #[test]
    fn scanner_noise_has_the_requested_std() {
        let mut a = Array3::<f32>::zeros((4, 64, 64));
        add_scanner_noise(&mut a, 15.0, 3);
        let n = a.len() as f32;
        let mean = a.sum() / n;
        let std = (a.mapv(|v| (v - mean) * (v - mean)).sum() / n).sqrt();
        assert!(mean.abs() < 1.0, "mean {mean}");
        assert!((std - 15.0).abs() < 1.0, "std {std}");
    }
}
