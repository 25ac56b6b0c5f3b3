//! The SSIM map and its means, in 2D and on `[z, y, x]` volumes.
//!
//! The map is computed only where the whole window fits (a *valid* separable convolution), so
//! it is smaller than the image by `win - 1` along each filtered axis; its element `[k, j, i]`
//! belongs to the image voxel `[k, j, i] + offset` with `offset` from [`map_offset`]. This is
//! exactly the region scikit-image averages after cropping `(win - 1) / 2` voxels from each
//! border of its reflection-padded map, so means agree with scikit-image without any padding.
//!
//! A volume is processed one output plane (axial slice of the map) at a time, in parallel with
//! rayon: a plane needs the statistics of `win` input slices (3D) or one (axial mode), filtered
//! along z, then x, then y. Memory stays at a few planes per thread, which matters at
//! 512x512x300 (a full map of the five local statistics in `f64` would take 3 GB). Sums over
//! planes are reduced in plane order, so results do not depend on the thread count.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::SsimParams;
use crate::error::{check_range, same_shape, MetricsError, Result};

/// Which neighbourhood the SSIM statistics of a `[z, y, x]` volume use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SsimMode {
    /// A 3D Gaussian window (11x11x11 by default): scikit-image's `structural_similarity` on
    /// the whole volume, as the SynthRAD challenge scores synthetic CT. Needs at least `win`
    /// slices.
    Volume,
    /// A 2D Gaussian window within each axial slice, averaged over all valid pixels of all
    /// slices (every slice has the same number, so this is also the mean of per-slice SSIMs).
    /// This is the SSIM a 2D network is trained with; it works for any number of slices.
    ///
    /// The default of validation and `evaluate` alike (one definition): it is the SSIM the
    /// model is trained on and the one 2D translation papers (pix2pix, RegGAN) report; it
    /// works on any volume, where the 3D window needs 11 slices and, on 5 mm slices, would
    /// average over 5.5 cm across slices that a 2D model translates one by one. `Volume`
    /// stays available for SynthRAD-comparable figures (`evaluate --ssim volume`).
    #[default]
    Axial,
}

/// SSIM of a volume over all valid voxels and inside each of several masks.
#[derive(Debug, Clone, PartialEq)]
pub struct SsimScores {
    /// Mean of the SSIM map over its whole (valid) extent.
    pub whole: f64,
    /// Mean of the SSIM map over the voxels of each mask that lie in the valid region; `None`
    /// where a mask has no voxel there.
    pub masked: Vec<Option<f64>>,
}

/// Where element `[0, 0, 0]` of a volume's SSIM map lies in the image, `[z, y, x]`:
/// `(win - 1) / 2` along every filtered axis.
pub fn map_offset(mode: SsimMode, params: &SsimParams) -> [usize; 3] {
    let pad = (params.win_size() - 1) / 2;
    match mode {
        SsimMode::Volume => [pad, pad, pad],
        SsimMode::Axial => [0, pad, pad],
    }
}

/// The valid SSIM map of two 2D images, shape `[ny - win + 1, nx - win + 1]`.
///
/// # Errors
/// Shapes differ, an image is smaller than the window, or the data range is invalid.
pub fn ssim_map_2d(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    data_range: f64,
    params: &SsimParams,
) -> Result<Array2<f64>> {
    let map = ssim_map_3d(
        a.insert_axis(Axis(0)),
        b.insert_axis(Axis(0)),
        SsimMode::Axial,
        data_range,
        params,
    )?;
    Ok(map.index_axis_move(Axis(0), 0))
}

/// Mean SSIM of two 2D images: scikit-image's `structural_similarity(a, b,
/// gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=R)` for the
/// default parameters.
///
/// # Errors
/// As [`ssim_map_2d`].
pub fn ssim_2d(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    data_range: f64,
    params: &SsimParams,
) -> Result<f64> {
    ssim_3d(
        a.insert_axis(Axis(0)),
        b.insert_axis(Axis(0)),
        SsimMode::Axial,
        data_range,
        params,
    )
}

/// Mean of the 2D SSIM map over the pixels where `mask` is non-zero (the mask is cropped
/// like the map, so pixels within `(win - 1) / 2` of the border do not count).
///
/// # Errors
/// As [`ssim_map_2d`]; also a mask of another shape, or one with no pixel in the valid region.
pub fn ssim_2d_masked(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    mask: ArrayView2<'_, u8>,
    data_range: f64,
    params: &SsimParams,
) -> Result<f64> {
    let s = ssim_3d_masked(
        a.insert_axis(Axis(0)),
        b.insert_axis(Axis(0)),
        &[mask.insert_axis(Axis(0))],
        SsimMode::Axial,
        data_range,
        params,
    )?;
    s.masked[0].ok_or(MetricsError::EmptyMask("SSIM"))
}

/// The valid SSIM map of two volumes: `[nz - win + 1, ny - win + 1, nx - win + 1]` in
/// [`SsimMode::Volume`], `[nz, ny - win + 1, nx - win + 1]` in [`SsimMode::Axial`].
///
/// Holds the whole map in memory (`f64`); to score large volumes use [`ssim_3d`] or
/// [`ssim_3d_masked`], which never do.
///
/// # Errors
/// As [`ssim_map_2d`].
pub fn ssim_map_3d(
    a: ArrayView3<'_, f32>,
    b: ArrayView3<'_, f32>,
    mode: SsimMode,
    data_range: f64,
    params: &SsimParams,
) -> Result<Array3<f64>> {
    let planes = map_planes(a, b, 0.0, mode, data_range, params, |_, plane| plane)?;
    let (nyo, nxo) = planes.first().map_or((0, 0), |p| p.dim());
    let mut map = Array3::zeros((planes.len(), nyo, nxo));
    for (mut out, plane) in map.outer_iter_mut().zip(&planes) {
        out.assign(plane);
    }
    Ok(map)
}

/// Mean SSIM of two volumes over the valid region (see [`SsimMode`]).
///
/// # Errors
/// As [`ssim_map_2d`].
pub fn ssim_3d(
    a: ArrayView3<'_, f32>,
    b: ArrayView3<'_, f32>,
    mode: SsimMode,
    data_range: f64,
    params: &SsimParams,
) -> Result<f64> {
    Ok(ssim_3d_masked(a, b, &[], mode, data_range, params)?.whole)
}

/// SSIM of two volumes over the whole valid region and inside each mask, in one pass.
///
/// The masked SSIM is the mean of the SSIM map over the mask's voxels (SynthRAD's
/// definition): the statistics around a voxel still see its unmasked neighbours, so the
/// score of a region includes how well its borders are reproduced. The images are not
/// altered outside the mask.
///
/// # Errors
/// As [`ssim_map_2d`]; also a mask of another shape than the images.
pub fn ssim_3d_masked(
    a: ArrayView3<'_, f32>,
    b: ArrayView3<'_, f32>,
    masks: &[ArrayView3<'_, u8>],
    mode: SsimMode,
    data_range: f64,
    params: &SsimParams,
) -> Result<SsimScores> {
    ssim_scores_offset(a, b, 0.0, masks, mode, data_range, params)
}

/// [`ssim_3d_masked`] on `a + offset` and `b + offset`, with the offset applied in `f64`.
///
/// SSIM's luminance term depends on absolute values, so HU images are shifted to start at 0
/// before scoring (see [`crate::score`]); doing it here avoids a rounded `f32` copy.
pub(crate) fn ssim_scores_offset(
    a: ArrayView3<'_, f32>,
    b: ArrayView3<'_, f32>,
    offset: f64,
    masks: &[ArrayView3<'_, u8>],
    mode: SsimMode,
    data_range: f64,
    params: &SsimParams,
) -> Result<SsimScores> {
    for m in masks {
        same_shape("SSIM mask vs image", m.shape(), a.shape())?;
    }
    let [_, oy, ox] = map_offset(mode, params);
    // Per plane: (sum over the plane, per mask (sum, count)).
    let parts = map_planes(a, b, offset, mode, data_range, params, |mz, plane| {
        let whole: f64 = plane.iter().sum();
        let masked: Vec<(f64, u64)> = masks
            .iter()
            .map(|m| {
                let m = m.index_axis(Axis(0), mz);
                let (nyo, nxo) = plane.dim();
                let m = m.slice(ndarray::s![oy..oy + nyo, ox..ox + nxo]);
                let mut sum = 0.0;
                let mut n = 0u64;
                ndarray::Zip::from(&plane).and(&m).for_each(|&s, &m| {
                    if m != 0 {
                        sum += s;
                        n += 1;
                    }
                });
                (sum, n)
            })
            .collect();
        (whole, plane.len() as u64, masked)
    })?;
    let mut whole = 0.0;
    let mut count = 0u64;
    let mut acc = vec![(0.0f64, 0u64); masks.len()];
    for (s, n, masked) in parts {
        whole += s;
        count += n;
        for (a, (s, n)) in acc.iter_mut().zip(masked) {
            a.0 += s;
            a.1 += n;
        }
    }
    let scores = SsimScores {
        whole: whole / count as f64,
        masked: acc
            .into_iter()
            .map(|(s, n)| (n > 0).then(|| s / n as f64))
            .collect(),
    };
    tracing::debug!(?mode, whole = scores.whole, masked = ?scores.masked, "SSIM");
    Ok(scores)
}

/// Computes every plane of the valid SSIM map and hands each to `f` with the image z index
/// of the plane's centre; returns `f`'s results in plane order.
fn map_planes<T: Send>(
    a: ArrayView3<'_, f32>,
    b: ArrayView3<'_, f32>,
    offset: f64,
    mode: SsimMode,
    data_range: f64,
    params: &SsimParams,
    f: impl Fn(usize, Array2<f64>) -> T + Sync,
) -> Result<Vec<T>> {
    same_shape("SSIM images", a.shape(), b.shape())?;
    check_range(data_range)?;
    let win = params.win_size();
    let (nz, ny, nx) = a.dim();
    let too_small = ny < win || nx < win || (mode == SsimMode::Volume && nz < win);
    if too_small {
        return Err(MetricsError::TooSmall {
            shape: a.shape().to_vec(),
            win,
        });
    }
    let w = params.gaussian_window();
    let (zw, n_planes) = match mode {
        SsimMode::Volume => (w.clone(), nz - win + 1),
        SsimMode::Axial => (vec![1.0], nz),
    };
    let oz = map_offset(mode, params)[0];
    let consts = params.constants(data_range);
    tracing::trace!(?mode, nz, ny, nx, win, n_planes, "SSIM map");
    Ok((0..n_planes)
        .into_par_iter()
        .map(|k| {
            let stats = plane_stats(a, b, k, &zw, offset);
            f(k + oz, ssim_plane(stats.filter_yx(&w), consts))
        })
        .collect())
}

/// The five local sums (`a`, `b`, `a^2`, `b^2`, `ab`) of one plane, each row-major `[y, x]`.
/// Kept as five planes (not interleaved): the filter passes then run as contiguous
/// multiply-adds over rows, which the compiler vectorises.
struct Stats {
    ny: usize,
    nx: usize,
    s: [Vec<f64>; 5],
}

/// Weighted sums over the input slices `z0 .. z0 + zw.len()` (the z part of the window).
fn plane_stats(
    a: ArrayView3<'_, f32>,
    b: ArrayView3<'_, f32>,
    z0: usize,
    zw: &[f64],
    offset: f64,
) -> Stats {
    let (_, ny, nx) = a.dim();
    let n = ny * nx;
    let mut s: [Vec<f64>; 5] = std::array::from_fn(|_| vec![0.0; n]);
    for (t, &wt) in zw.iter().enumerate() {
        let va = a.index_axis(Axis(0), z0 + t);
        let vb = b.index_axis(Axis(0), z0 + t);
        // Standard-layout volumes give plain slices; anything else is copied once.
        let (own_a, own_b): (Vec<f32>, Vec<f32>);
        let pa = match va.as_slice() {
            Some(p) => p,
            None => {
                own_a = va.iter().copied().collect();
                &own_a
            }
        };
        let pb = match vb.as_slice() {
            Some(p) => p,
            None => {
                own_b = vb.iter().copied().collect();
                &own_b
            }
        };
        let [sa, sb, saa, sbb, sab] = &mut s;
        // Equal lengths let the compiler drop the bounds checks.
        let (pa, pb) = (&pa[..n], &pb[..n]);
        let (sa, sb, saa, sbb, sab) = (
            &mut sa[..n],
            &mut sb[..n],
            &mut saa[..n],
            &mut sbb[..n],
            &mut sab[..n],
        );
        for i in 0..n {
            let x = f64::from(pa[i]) + offset;
            let y = f64::from(pb[i]) + offset;
            sa[i] += wt * x;
            sb[i] += wt * y;
            saa[i] += wt * (x * x);
            sbb[i] += wt * (y * y);
            sab[i] += wt * (x * y);
        }
    }
    Stats { ny, nx, s }
}

impl Stats {
    /// Valid correlation with `w` along x, then along y.
    fn filter_yx(self, w: &[f64]) -> Stats {
        let win = w.len();
        let (ny, nx) = (self.ny, self.nx);
        let (nyo, nxo) = (ny - win + 1, nx - win + 1);
        let s = self.s.map(|src| {
            // x: out[y, i] = sum_t w[t] src[y, i + t]
            let mut fx = vec![0.0; ny * nxo];
            for (row_out, row_in) in fx.chunks_exact_mut(nxo).zip(src.chunks_exact(nx)) {
                for (t, &wt) in w.iter().enumerate() {
                    for (o, &v) in row_out.iter_mut().zip(&row_in[t..t + nxo]) {
                        *o += wt * v;
                    }
                }
            }
            // y: out[j, i] = sum_t w[t] fx[j + t, i]
            let mut fy = vec![0.0; nyo * nxo];
            for (j, row_out) in fy.chunks_exact_mut(nxo).enumerate() {
                for (t, &wt) in w.iter().enumerate() {
                    let row_in = &fx[(j + t) * nxo..(j + t + 1) * nxo];
                    for (o, &v) in row_out.iter_mut().zip(row_in) {
                        *o += wt * v;
                    }
                }
            }
            fy
        });
        Stats {
            ny: nyo,
            nx: nxo,
            s,
        }
    }
}

/// SSIM from the local moments, as scikit-image writes it (population covariance).
fn ssim_plane(st: Stats, (c1, c2): (f64, f64)) -> Array2<f64> {
    let [ux, uy, uxx, uyy, uxy] = &st.s;
    Array2::from_shape_fn((st.ny, st.nx), |(j, i)| {
        let k = j * st.nx + i;
        let (mx, my) = (ux[k], uy[k]);
        let vx = uxx[k] - mx * mx;
        let vy = uyy[k] - my * my;
        let vxy = uxy[k] - mx * my;
        let a1 = 2.0 * mx * my + c1;
        let a2 = 2.0 * vxy + c2;
        let b1 = mx * mx + my * my + c1;
        let b2 = vx + vy + c2;
        (a1 * a2) / (b1 * b2)
    })
}
