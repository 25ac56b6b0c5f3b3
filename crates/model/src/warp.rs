//! The spatial transformer: warps an image by a dense displacement field in pixels.
//!
//! Convention (RegGAN's `Transformer_2D`, MONAI's `Warp`): output pixel (y, x) takes the
//! value of the input at (y + dy, x + dx), interpolated bilinearly; positions outside the
//! image take the nearest border value (border padding). libtorch's `grid_sampler` wants
//! normalized coordinates in [-1, 1]; with `align_corners = true`, -1 and +1 are the centres
//! of the first and last pixels, so
//!
//! ```text
//! grid_x = 2 * (x + dx) / (W - 1) - 1,   grid_y = 2 * (y + dy) / (H - 1) - 1
//! ```
//!
//! and a zero field reproduces the image exactly (up to float rounding). The result is
//! differentiable with respect to both the image and the field.

use tch::{Kind, Tensor};

/// `grid_sampler` interpolation mode: bilinear.
const BILINEAR: i64 = 0;
/// `grid_sampler` padding mode: border.
const BORDER: i64 = 1;

/// The sampling grid for `flow`: identity + flow, normalized for `align_corners = true`.
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
/// (channel 0 = dx along width, 1 = dy along height), same kind and device ->
/// [batch, channels, height, width].
///
/// # Panics
/// If the shapes do not match as above (a programming error).
pub fn warp(image: &Tensor, flow: &Tensor) -> Tensor {
    let (is, fs) = (image.size(), flow.size());
    assert!(
        is.len() == 4 && fs.len() == 4 && is[0] == fs[0] && is[2..] == fs[2..],
        "warp: image {is:?} and flow {fs:?} must be [B,C,H,W] and [B,2,H,W]"
    );
    let grid = sampling_grid(flow);
    let grid = if grid.kind() == image.kind() {
        grid
    } else {
        grid.to_kind(image.kind())
    };
    tracing::trace!(image = ?is, "warp");
    image.grid_sampler(&grid, BILINEAR, BORDER, true)
}

/// Largest absolute displacement of `flow` in pixels, for logging.
pub fn max_displacement(flow: &Tensor) -> f64 {
    flow.abs().max().to_kind(Kind::Double).double_value(&[])
}
