//! Differentiable SSIM on tch tensors: the SSIM loss term, with the window and constants of
//! [`metrics::SsimParams`] (the project's single definition, DESIGN.md "SSIM").
//!
//! With the default parameters the mean SSIM equals scikit-image's
//! `structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//! data_range=R)` (checked against committed goldens in `tests/ssim_skimage.rs`):
//!
//! * the local means, variances and covariance come from a separable Gaussian window applied as
//!   two depthwise (one group per channel) 1D convolutions, vertical then horizontal;
//! * the convolution is *valid* (unpadded): scikit-image filters with reflection and then crops
//!   `(win - 1) / 2` pixels on each side before averaging, so exactly the pixels whose window
//!   lies inside the image count, and those are the pixels a valid convolution produces;
//! * variances are population variances, `E[x^2] - E[x]^2` (no `N / (N - 1)` factor);
//! * the mean is taken over all valid pixels of all channels and batch items (every image of a
//!   batch has the same number of valid pixels, so this is also the mean of per-image SSIMs).
//!
//! Numerics: `E[x^2] - E[x]^2` cancels badly in float32 when the images carry a large offset
//! (HU values around 1000 with a range of 4095). SSIM's variance and covariance do not depend on
//! an offset common to both images, so the statistics are computed on images shifted by the
//! (detached) mean of the pair per image and channel, and the offset is added back to the local
//! means only. The result is mathematically identical and its gradient unchanged (the shift is a
//! constant of which the result does not depend), but float32 keeps ~1e-6 accuracy on HU data.
//! The computation runs in the inputs' kind: pass float64 tensors for reference-grade values.

use metrics::SsimParams;
use tch::{Kind, Tensor};
use tracing::trace;

use crate::losses::LossError;

/// Mean SSIM over all valid pixels, channels and batch items: a scalar tensor in the inputs'
/// kind, differentiable with respect to both images.
///
/// # Shapes
/// * `a`, `b`: `[batch, channels, height, width]`, same shape and floating kind, height and
///   width at least the window size (11 with the defaults).
/// * returns: `[]` (scalar).
///
/// `data_range` is the dynamic range of the images (2.0 for images in [-1, 1], 4095 for HU in
/// [-1024, 3071]); it sets the stabilising constants `C1 = (K1 R)^2`, `C2 = (K2 R)^2`.
pub fn ssim(
    a: &Tensor,
    b: &Tensor,
    data_range: f64,
    params: &SsimParams,
) -> Result<Tensor, LossError> {
    Ok(ssim_map(a, b, data_range, params)?.mean(a.kind()))
}

/// Per-pixel SSIM over the valid region (the pixels whose whole window lies inside the image).
///
/// # Shapes
/// * `a`, `b`: `[batch, channels, height, width]` as for [`ssim`].
/// * returns: `[batch, channels, height - win + 1, width - win + 1]`; output pixel `(i, j)`
///   belongs to input pixel `(i + pad, j + pad)` with `pad = (win - 1) / 2` (see [`crop_valid`]).
pub fn ssim_map(
    a: &Tensor,
    b: &Tensor,
    data_range: f64,
    params: &SsimParams,
) -> Result<Tensor, LossError> {
    let [batch, channels, height, width] = check_pair(a, b, params)?;
    if !(data_range.is_finite() && data_range > 0.0) {
        return Err(LossError::InvalidParameter(format!(
            "SSIM data range must be finite and positive, got {data_range}"
        )));
    }
    let kind = a.kind();
    let (c1, c2) = params.constants(data_range);
    trace!(
        batch,
        channels,
        height,
        width,
        data_range,
        ?kind,
        "ssim_map"
    );

    // Shift both images by the mean of the pair (per image and channel) so that the second
    // moments do not cancel catastrophically; see the module docs.
    // [batch, channels, 1, 1]
    let offset = ((a.mean_dim([2, 3].as_slice(), true, kind)
        + b.mean_dim([2, 3].as_slice(), true, kind))
        * 0.5)
        .detach();
    let a0 = a - &offset;
    let b0 = b - &offset;

    // All five local statistics in one depthwise convolution.
    // [batch, 5 * channels, height, width]: a, b, a*a, b*b, a*b
    let stacked = Tensor::cat(&[&a0, &b0, &(&a0 * &a0), &(&b0 * &b0), &(&a0 * &b0)], 1);
    // [batch, 5 * channels, height - win + 1, width - win + 1]
    let filtered = gaussian_filter_valid(&stacked, params);
    let parts = filtered.chunk(5, 1);
    let (mu_a0, mu_b0, e_aa, e_bb, e_ab) = (&parts[0], &parts[1], &parts[2], &parts[3], &parts[4]);

    let var_a = e_aa - mu_a0 * mu_a0;
    let var_b = e_bb - mu_b0 * mu_b0;
    let cov_ab = e_ab - mu_a0 * mu_b0;
    let mu_a = mu_a0 + &offset;
    let mu_b = mu_b0 + &offset;

    let luminance_num = (&mu_a * &mu_b) * 2.0 + c1;
    let luminance_den = &mu_a * &mu_a + &mu_b * &mu_b + c1;
    let structure_num = cov_ab * 2.0 + c2;
    let structure_den = var_a + var_b + c2;
    Ok((luminance_num * structure_num) / (luminance_den * structure_den))
}

/// Mean of the SSIM map weighted per pixel: `sum(w * S) / sum(w)` over the valid region, the
/// weight map being cropped to that region and broadcast over channels.
///
/// # Shapes
/// * `a`, `b`: `[batch, channels, height, width]` as for [`ssim`].
/// * `weight`: `[batch, 1, height, width]` (or `[batch, channels, height, width]`), non-negative
///   with a positive sum over the valid region (not checked: that would need a device sync).
/// * returns: `[]` (scalar).
pub fn weighted_ssim(
    a: &Tensor,
    b: &Tensor,
    weight: &Tensor,
    data_range: f64,
    params: &SsimParams,
) -> Result<Tensor, LossError> {
    let map = ssim_map(a, b, data_range, params)?;
    let size = a.size();
    let wsize = weight.size();
    if wsize.len() != 4
        || wsize[0] != size[0]
        || (wsize[1] != 1 && wsize[1] != size[1])
        || wsize[2..] != size[2..]
    {
        return Err(LossError::Shape {
            what: "SSIM weight map",
            expected: format!("[{}, 1 or {}, {}, {}]", size[0], size[1], size[2], size[3]),
            got: wsize,
        });
    }
    // [batch, channels, height - win + 1, width - win + 1]
    let w = crop_valid(&weight.to_kind(map.kind()), params).expand_as(&map);
    Ok((&w * &map).sum(map.kind()) / w.sum(map.kind()))
}

/// Crops `[batch, c, height, width]` to the SSIM valid region
/// `[batch, c, height - win + 1, width - win + 1]` (drops `(win - 1) / 2` pixels per border), so
/// that per-pixel weights line up with [`ssim_map`]'s output.
pub fn crop_valid(x: &Tensor, params: &SsimParams) -> Tensor {
    let win = params.win_size() as i64;
    let pad = (win - 1) / 2;
    let size = x.size();
    let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
    x.narrow(-2, pad, h - win + 1).narrow(-1, pad, w - win + 1)
}

/// Separable Gaussian filtering without padding, each channel on its own (depthwise).
///
/// # Shapes
/// `x`: `[batch, channels, height, width]` -> `[batch, channels, height - win + 1, width - win + 1]`.
fn gaussian_filter_valid(x: &Tensor, params: &SsimParams) -> Tensor {
    let window = params.gaussian_window();
    let n = window.len() as i64;
    let channels = x.size()[1];
    // The window is built in f64 and rounded once to the compute kind.
    let g = Tensor::from_slice(&window)
        .to_kind(x.kind())
        .to_device(x.device());
    // [channels, 1, n, 1] and [channels, 1, 1, n]: one filter per channel (groups = channels).
    let vertical = g.view([1, 1, n, 1]).repeat([channels, 1, 1, 1]);
    let horizontal = g.view([1, 1, 1, n]).repeat([channels, 1, 1, 1]);
    x.conv2d(&vertical, None::<Tensor>, [1, 1], [0, 0], [1, 1], channels)
        .conv2d(
            &horizontal,
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            channels,
        )
}

/// Checks that `a` and `b` are same-shaped 4D floating tensors at least one window in size.
fn check_pair(a: &Tensor, b: &Tensor, params: &SsimParams) -> Result<[i64; 4], LossError> {
    let size = a.size();
    let [batch, channels, height, width] =
        <[i64; 4]>::try_from(size.as_slice()).map_err(|_| LossError::Shape {
            what: "SSIM input",
            expected: "[batch, channels, height, width]".into(),
            got: size.clone(),
        })?;
    if b.size() != size {
        return Err(LossError::Shape {
            what: "SSIM second input",
            expected: format!("{size:?}"),
            got: b.size(),
        });
    }
    for t in [a, b] {
        if !matches!(
            t.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            return Err(LossError::Kind {
                what: "SSIM input",
                got: t.kind(),
            });
        }
    }
    if a.kind() != b.kind() {
        return Err(LossError::Kind {
            what: "SSIM second input (differs from the first)",
            got: b.kind(),
        });
    }
    let win = params.win_size() as i64;
    if height < win || width < win {
        return Err(LossError::ImageTooSmall { height, width, win });
    }
    Ok([batch, channels, height, width])
}
