//! Running the 2D generator over a `[z, y, x]` HU volume, axial slice by axial slice: the one
//! implementation behind training's validation (`train::validate`) and [`crate::predict`], so
//! that a validation score is the score of exactly what `ncct2ctpa predict` would write.
//!
//! How a volume becomes G's input and G's output becomes HU ([`SliceFrame`]):
//! 1. each slice is clipped to the run's [`IntensityWindow`] and mapped to [-1, 1]; a
//!    generator with `2k + 1` input channels sees the slices `z - k ..= z + k` (clamped at the
//!    ends of the volume);
//! 2. slices are padded to a multiple of the UNet's size multiple (`2^depth`) with -1 (air, a
//!    CT's background), centred, so that any slice size works and the padding is shared
//!    between opposite borders;
//! 3. G's output is cropped back to the slice and mapped back to HU.
//!
//! The forward pass itself is the caller's ([`translate_slices`] takes it as a closure):
//! plain G in eval mode for validation; G under autocast and with test-time augmentation in
//! predict.

use crate::tensors::{array_to_tensor, tensor_to_array};
use anyhow::{bail, ensure};
use dataset::manifest::IntensityWindow;
use model::config::GeneratorConfig;
use ndarray::{s, Array3, Array4, ArrayView3, Axis};
use tch::{Device, Tensor};

/// Where a `height` x `width` slice sits inside its padded canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Padded height and width (multiples of the frame's size multiple).
    pub height: usize,
    pub width: usize,
    /// Rows above and columns left of the slice.
    pub top: usize,
    pub left: usize,
}

/// How axial HU slices become a batch of G's input and G's output becomes HU slices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceFrame {
    window: IntensityWindow,
    in_channels: usize,
    multiple: usize,
}

impl SliceFrame {
    /// A frame of `in_channels` neighbouring slices (odd: `z - k ..= z + k`), padded to a
    /// multiple of `multiple`, intensities mapped through `window`.
    pub fn new(
        window: IntensityWindow,
        in_channels: usize,
        multiple: usize,
    ) -> anyhow::Result<Self> {
        if in_channels.is_multiple_of(2) {
            bail!(
                "the generator has {in_channels} input channels; translating a volume needs an \
                 odd number (slices z-k..z+k)"
            );
        }
        ensure!(multiple > 0, "the size multiple must be positive");
        Ok(Self {
            window,
            in_channels,
            multiple,
        })
    }

    /// The frame a generator built from `cfg` needs: its input channels and size multiple.
    pub fn for_generator(cfg: &GeneratorConfig, window: IntensityWindow) -> anyhow::Result<Self> {
        let in_channels = usize::try_from(cfg.in_channels).unwrap_or(0);
        let multiple = usize::try_from(cfg.size_multiple()).unwrap_or(0);
        Self::new(window, in_channels, multiple)
    }

    /// The same frame padded to a multiple of both its own multiple and `other` (for tensors
    /// that also feed a network with a larger multiple, such as R in the sample grids).
    pub fn padded_for(self, other: usize) -> Self {
        let m = self.multiple;
        let other = other.max(1);
        Self {
            multiple: m / gcd(m, other) * other,
            ..self
        }
    }

    /// The same frame with one input channel (for a target slice, which is never stacked).
    pub fn single_channel(self) -> Self {
        Self {
            in_channels: 1,
            ..self
        }
    }

    pub fn window(&self) -> IntensityWindow {
        self.window
    }

    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// The size multiple slices are padded to (`2^depth`).
    pub fn multiple(&self) -> usize {
        self.multiple
    }

    /// The padded canvas of a `height` x `width` slice, the slice centred in it.
    pub fn padding(&self, height: usize, width: usize) -> Padding {
        let (ph, pw) = (
            height.div_ceil(self.multiple) * self.multiple,
            width.div_ceil(self.multiple) * self.multiple,
        );
        Padding {
            height: ph,
            width: pw,
            top: (ph - height) / 2,
            left: (pw - width) / 2,
        }
    }

    /// G's input for the slices of `hu` (`[z, y, x]`, HU) centred on each of `zs`: normalised,
    /// stacked with their neighbours, padded with -1.
    ///
    /// # Shapes
    /// returns [zs.len(), in_channels, padded height, padded width] on `device`
    pub fn input(
        &self,
        hu: ArrayView3<'_, f32>,
        zs: &[usize],
        device: Device,
    ) -> anyhow::Result<Tensor> {
        let (nz, ny, nx) = hu.dim();
        if let Some(z) = zs.iter().find(|&&z| z >= nz) {
            bail!("slice {z} is outside a volume of {nz} slices");
        }
        let p = self.padding(ny, nx);
        let half = self.in_channels / 2;
        let w = self.window;
        // [batch, in_channels, padded height, padded width], air outside the slice
        let mut a = Array4::<f32>::from_elem((zs.len(), self.in_channels, p.height, p.width), -1.0);
        for (i, &z) in zs.iter().enumerate() {
            for c in 0..self.in_channels {
                let src = (z + c).saturating_sub(half).min(nz - 1);
                a.slice_mut(s![i, c, p.top..p.top + ny, p.left..p.left + nx])
                    .zip_mut_with(&hu.slice(s![src, .., ..]), |d, &v| *d = w.normalize(v));
            }
        }
        array_to_tensor(&a, device)
    }

    /// Crops padded maps back to the `height` x `width` slice, on their device.
    ///
    /// # Shapes
    /// `t`: [batch, channels, padded height, padded width] -> [batch, channels, height, width]
    pub fn crop(&self, t: &Tensor, height: usize, width: usize) -> Tensor {
        let p = self.padding(height, width);
        t.narrow(2, p.top as i64, height as i64)
            .narrow(3, p.left as i64, width as i64)
    }

    /// G's output as HU slices on the host: cropped, cast to f32, mapped back through the
    /// window.
    ///
    /// # Shapes
    /// `y`: [batch, 1, padded height, padded width] -> [batch, height, width]
    pub fn output_hu(
        &self,
        y: &Tensor,
        height: usize,
        width: usize,
    ) -> anyhow::Result<Array3<f32>> {
        let a = tensor_to_array(&self.crop(y, height, width))?;
        let channels = a.dim().1;
        ensure!(
            channels == 1,
            "expected G's output to have 1 channel, got {channels}"
        );
        let w = self.window;
        // [batch, height, width]
        Ok(a.index_axis_move(Axis(1), 0).mapv(|v| w.denormalize(v)))
    }
}

/// Translates every axial slice of `hu` (`[z, y, x]`, HU) in batches of `batch_size` slices
/// (0 is taken as 1) and returns HU on the same grid. `forward` is G's forward pass as the
/// caller wants it run; `on_batch(n)` is told after each batch of `n` slices.
///
/// # Shapes
/// `forward`: [batch, in_channels, padded height, padded width] ->
/// [batch, 1, padded height, padded width]
pub fn translate_slices(
    frame: &SliceFrame,
    hu: ArrayView3<'_, f32>,
    batch_size: usize,
    device: Device,
    mut forward: impl FnMut(&Tensor) -> anyhow::Result<Tensor>,
    mut on_batch: impl FnMut(usize),
) -> anyhow::Result<Array3<f32>> {
    let (nz, ny, nx) = hu.dim();
    let batch_size = batch_size.max(1);
    let p = frame.padding(ny, nx);
    tracing::debug!(
        nz,
        ny,
        nx,
        padded_height = p.height,
        padded_width = p.width,
        in_channels = frame.in_channels,
        batch_size,
        "translating slices"
    );
    let mut out = Array3::<f32>::zeros((nz, ny, nx));
    let mut z0 = 0;
    while z0 < nz {
        let z1 = (z0 + batch_size).min(nz);
        let zs: Vec<usize> = (z0..z1).collect();
        let x = frame.input(hu, &zs, device)?;
        let y = forward(&x)?;
        out.slice_mut(s![z0..z1, .., ..])
            .assign(&frame.output_hu(&y, ny, nx)?);
        on_batch(z1 - z0);
        z0 = z1;
    }
    Ok(out)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(in_channels: usize, multiple: usize) -> SliceFrame {
        SliceFrame::new(IntensityWindow::default(), in_channels, multiple).unwrap()
    }

    /// Odd slices are centred in the padded canvas, air around them, and crop back exactly.
    #[test]
    fn pads_centred_with_air_and_crops_back() {
        let f = frame(1, 8);
        let p = f.padding(13, 21);
        assert_eq!(
            p,
            Padding {
                height: 16,
                width: 24,
                top: 1,
                left: 1
            }
        );
        let hu = Array3::from_shape_fn((2, 13, 21), |(z, y, x)| (100 * z + 10 * y + x) as f32);
        let x = f.input(hu.view(), &[1], Device::Cpu).unwrap();
        assert_eq!(x.size(), vec![1, 1, 16, 24]);
        let a = tensor_to_array(&x).unwrap();
        assert_eq!(a[[0, 0, 0, 0]], -1.0);
        assert_eq!(a[[0, 0, 15, 23]], -1.0);
        let w = IntensityWindow::default();
        assert_eq!(a[[0, 0, 1 + 4, 1 + 7]], w.normalize(hu[[1, 4, 7]]));
        let back = f.output_hu(&x, 13, 21).unwrap();
        let expected = hu
            .slice(s![1..2, .., ..])
            .mapv(|v| w.denormalize(w.normalize(v)));
        assert_eq!(back, expected);
    }

    /// A 2.5D frame stacks `z - k ..= z + k`, repeating the end slices at the volume's ends.
    #[test]
    fn stacks_neighbours_clamped_at_the_ends() {
        let f = frame(3, 1);
        let hu = Array3::from_shape_fn((3, 2, 2), |(z, _, _)| -1000.0 + 100.0 * z as f32);
        let a = tensor_to_array(&f.input(hu.view(), &[0, 2], Device::Cpu).unwrap()).unwrap();
        let w = IntensityWindow::default();
        let level = |z: usize| w.normalize(-1000.0 + 100.0 * z as f32);
        let centre = |b: usize, c: usize| a[[b, c, 0, 0]];
        assert_eq!(
            [centre(0, 0), centre(0, 1), centre(0, 2)],
            [level(0), level(0), level(1)]
        );
        assert_eq!(
            [centre(1, 0), centre(1, 1), centre(1, 2)],
            [level(1), level(2), level(2)]
        );
        assert!(f.input(hu.view(), &[3], Device::Cpu).is_err());
    }

    /// Batches cover every slice once, in order, whatever the batch size.
    #[test]
    fn batches_cover_every_slice_in_order() {
        let f = frame(1, 4);
        let hu = Array3::from_shape_fn((5, 6, 7), |(z, y, x)| (z * 42 + y * 7 + x) as f32 - 500.0);
        let mut seen = Vec::new();
        let out = translate_slices(
            &f,
            hu.view(),
            2,
            Device::Cpu,
            |x| Ok(x.shallow_clone()),
            |n| seen.push(n),
        )
        .unwrap();
        assert_eq!(seen, vec![2, 2, 1]);
        let w = IntensityWindow::default();
        assert_eq!(out, hu.mapv(|v| w.denormalize(w.normalize(v))));
    }

    #[test]
    fn rejects_even_channel_counts_and_combines_multiples() {
        assert!(SliceFrame::new(IntensityWindow::default(), 2, 8).is_err());
        assert!(SliceFrame::new(IntensityWindow::default(), 1, 0).is_err());
        assert_eq!(frame(1, 8).padded_for(32).padding(33, 8).height, 64);
        assert_eq!(frame(1, 8).padded_for(12).multiple, 24);
    }
}
