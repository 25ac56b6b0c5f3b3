//! The spatial transformer: warps an image by a dense displacement field in pixels.
//!
//! Convention (RegGAN's `Transformer_2D`, MONAI's `Warp`): output pixel (y, x) takes the
//! value of the input at (y + dy, x + dx), interpolated bilinearly; positions outside the
//! image take the nearest border value (border padding). This is
//! `grid_sample(image, grid, mode = "bilinear", padding_mode = "border", align_corners = true)`
//! with the normalized grid ([`sampling_grid`])
//!
//! ```text
//! grid_x = 2 * (x + dx) / (W - 1) - 1,   grid_y = 2 * (y + dy) / (H - 1) - 1
//! ```
//!
//! (with `align_corners = true`, -1 and +1 are the centres of the first and last pixels).
//! [`warp`] computes the same thing directly in pixel coordinates (clamp to the border, four
//! gathers, bilinear weights) instead of going through normalized coordinates: the round trip
//! x -> 2x/(W-1)-1 -> x loses a few float32 ulps, so a zero field through `grid_sampler`
//! differs from the image by up to ~4e-6 on a 32-pixel-wide noisy image (more on wider
//! ones), while here a zero or integer field reproduces the image exactly. The two agree to
//! float rounding (checked against PyTorch's `grid_sample` in `tests/parity.rs`). The result
//! is differentiable with respect to both the image and the field; as in `grid_sample`, the
//! field's gradient is zero where the sampling point is clamped to the border.
//!
//! Training uses libtorch's sampler by default ([`WarpMethod::GridSample`], what PyTorch's
//! RegGAN and MONAI's `Warp` call): one fused kernel forward and one backward, against the
//! dozen elementwise ops and four gathers of [`warp`] (measured 2.6x slower on the CPU in the
//! benchmark's per-part profile). The ulps it loses on the coordinate round trip are far
//! below anything training can see; [`WarpMethod::Exact`] keeps the exact identity for
//! whoever needs it (`model.registration.warp = "exact"`).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How the spatial transformer samples (`model.registration.warp`). Both compute bilinear,
/// align_corners = true, border-padded sampling; they agree to float rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarpMethod {
    /// libtorch's `grid_sampler_2d` on [`sampling_grid`] (PyTorch's `F.grid_sample`): fused
    /// kernels. A zero field reproduces the image to a few float32 ulps. The default.
    #[default]
    GridSample,
    /// [`warp`]: gathers in pixel coordinates; a zero or integer field is exactly the
    /// identity or shift.
    Exact,
}

/// Warps `image` by `flow` with `method` (shapes as [`warp`]).
pub fn warp_with(method: WarpMethod, image: &Tensor, flow: &Tensor) -> Tensor {
    match method {
        WarpMethod::Exact => warp(image, flow),
        WarpMethod::GridSample => {
            let grid = finite_grid(&sampling_grid(&flow.to_kind(image.kind())));
            // interpolation 0 = bilinear, padding 1 = border
            image.grid_sampler_2d(&grid, 0, 1, true)
        }
    }
}

/// Warps a three-slice stack across slices (`model.registration.through_plane`, #16): the
/// in-plane field `(dx, dy)` warps each slice with `method`, and `dz` (slices, in [-1, 1])
/// interpolates them linearly along z: `(1 - |dz|) * centre + max(dz, 0) * above +
/// max(-dz, 0) * below`. That is trilinear sampling of the stack at `(x + dx, y + dy, 1 +
/// dz)` with the same in-plane field for the three slices; a zero `dz` gives the centre slice
/// warped as [`warp_with`] warps it.
///
/// # Shapes
/// `stack`: [batch, 3, height, width] (below, centre, above); `flow`: [batch, 3, height,
/// width] (dx, dy in pixels, dz in slices) -> [batch, 1, height, width].
///
/// # Panics
/// If the shapes do not match as above (a programming error).
pub fn warp_through_plane(method: WarpMethod, stack: &Tensor, flow: &Tensor) -> Tensor {
    let (ss, fs) = (stack.size(), flow.size());
    let n = crate::registration::THROUGH_PLANE_SLICES;
    assert!(
        ss.len() == 4 && fs.len() == 4 && ss[1] == n && fs[1] == 3 && ss[0] == fs[0],
        "warp_through_plane: stack {ss:?} and flow {fs:?} must be [B,3,H,W] each"
    );
    let warped = warp_with(method, stack, &flow.narrow(1, 0, 2));
    let dz = flow.narrow(1, 2, 1).to_kind(warped.kind()).clamp(-1.0, 1.0);
    let (below, centre, above) = (
        warped.narrow(1, 0, 1),
        warped.narrow(1, 1, 1),
        warped.narrow(1, 2, 1),
    );
    centre * (1.0 - dz.abs()) + above * dz.clamp_min(0.0) + below * (-&dz).clamp_min(0.0)
}

/// The grid with non-finite coordinates replaced (NaN by the image centre, infinities by the
/// border) and everything clamped to [-2, 2]: libtorch's sampler indexes memory by the
/// coordinates, and its backward pass crashes the process on a NaN or an infinity (seen with
/// a diverging R, #13). For a finite grid this changes no value and no gradient: border
/// padding already clips coordinates beyond [-1, 1] and passes them no gradient. A
/// non-finite flow is still caught, by the smoothness term it makes non-finite (the step's
/// on-device check), before any weight moves.
fn finite_grid(grid: &Tensor) -> Tensor {
    grid.nan_to_num(0.0, 2.0, -2.0).clamp(-2.0, 2.0)
}

/// The normalized sampling grid equivalent to [`warp`]: identity + flow, normalized for
/// `grid_sampler(.., align_corners = true)` (for callers that use libtorch's sampler, and as
/// the reference in tests).
///
/// # Shapes
/// `flow`: [batch, 2, height, width] (dx, dy in pixels) -> [batch, height, width, 2]
/// (x, y normalized to [-1, 1] at the centres of the border pixels).
///
/// # Panics
/// If `flow` is not [batch, 2, height, width] with height, width >= 2 (a programming error:
/// the flow comes from [`crate::registration::RegistrationNet`]).
pub fn sampling_grid(flow: &Tensor) -> Tensor {
    let size = flow.size();
    assert!(
        size.len() == 4 && size[1] == 2 && size[2] >= 2 && size[3] >= 2,
        "warp: the flow must be [batch, 2, height >= 2, width >= 2], got {size:?}"
    );
    let (h, w) = (size[2], size[3]);
    let opts = (flow.kind(), flow.device());
    // [height] and [width] pixel indices, broadcast against the flow's [batch, height, width]
    let ys = Tensor::arange(h, opts).view([1, h, 1]);
    let xs = Tensor::arange(w, opts).view([1, 1, w]);
    let dx = flow.select(1, 0); // [batch, height, width]
    let dy = flow.select(1, 1);
    let gx = (dx + xs) * (2.0 / (w - 1) as f64) - 1.0;
    let gy = (dy + ys) * (2.0 / (h - 1) as f64) - 1.0;
    // [batch, height, width, 2] with (x, y) last, as grid_sampler expects
    Tensor::stack(&[gx, gy], 3)
}

/// Warps `image` by `flow`: bilinear, align_corners = true, border padding.
///
/// # Shapes
/// `image`: [batch, channels, height, width]; `flow`: [batch, 2, height, width] in pixels
/// (channel 0 = dx along width, 1 = dy along height), same device ->
/// [batch, channels, height, width] of the image's kind.
///
/// # Panics
/// If the shapes do not match as above (a programming error).
pub fn warp(image: &Tensor, flow: &Tensor) -> Tensor {
    let (is, fs) = (image.size(), flow.size());
    assert!(
        is.len() == 4 && fs.len() == 4 && fs[1] == 2 && is[0] == fs[0] && is[2..] == fs[2..],
        "warp: image {is:?} and flow {fs:?} must be [B,C,H,W] and [B,2,H,W]"
    );
    let (b, c, h, w) = (is[0], is[1], is[2], is[3]);
    tracing::trace!(image = ?is, "warp");
    let flow = flow.to_kind(image.kind());
    let opts = (image.kind(), image.device());
    // 1. sampling positions in pixels, clamped to the image (border padding) [b, h, w]
    let xs = Tensor::arange(w, opts).view([1, 1, w]);
    let ys = Tensor::arange(h, opts).view([1, h, 1]);
    // (non-finite positions, from a diverging R, become in-range ones: they index memory)
    let px = (flow.select(1, 0) + xs)
        .nan_to_num(0.0, None, None)
        .clamp(0.0, (w - 1) as f64);
    let py = (flow.select(1, 1) + ys)
        .nan_to_num(0.0, None, None)
        .clamp(0.0, (h - 1) as f64);
    // 2. the four neighbours and the bilinear weights (differentiable through px, py)
    let x0 = px.floor().detach();
    let y0 = py.floor().detach();
    let wx = (&px - &x0).unsqueeze(1); // [b, 1, h, w]
    let wy = (&py - &y0).unsqueeze(1);
    let x0 = x0.to_kind(Kind::Int64);
    let y0 = y0.to_kind(Kind::Int64);
    let x1 = (&x0 + 1).clamp_max(w - 1);
    let y1 = (&y0 + 1).clamp_max(h - 1);
    // 3. gather the neighbours from the flattened image [b, c, h * w]
    let flat = image.reshape([b, c, h * w]);
    let at = |yi: &Tensor, xi: &Tensor| {
        let index = (yi * w + xi)
            .view([b, 1, h * w])
            .expand([b, c, h * w], false);
        flat.gather(2, &index, false).view([b, c, h, w])
    };
    let top = at(&y0, &x0) * (1.0 - &wx) + at(&y0, &x1) * &wx;
    let bottom = at(&y1, &x0) * (1.0 - &wx) + at(&y1, &x1) * &wx;
    // 4. blend the rows [b, c, h, w]
    top * (1.0 - &wy) + bottom * wy
}

/// Largest absolute displacement of `flow` in pixels, for logging.
pub fn max_displacement(flow: &Tensor) -> f64 {
    flow.abs().max().to_kind(Kind::Double).double_value(&[])
}
