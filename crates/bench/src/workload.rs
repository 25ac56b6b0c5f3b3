//! The inputs both sides of the benchmark use, defined by formulas so that
//! `tools/pytorch_twin/bench.py` builds the same values without any file passing between them.

use infer::tensors::array_to_tensor;
use ndarray::{Array3, Array4};
use tch::Device;
use train::step::BatchTensors;
use volume::{Geometry, Volume};

/// A training batch `[batch, 1, size, size]`: smooth images in [-0.8, 0.8]
/// (`x = 0.8 sin(0.11 i + 0.07 j + 0.5 b)`, the target the same with a phase shift of 0.3), a
/// rectangular lung mask (rows `size/4 .. size - size/4`, columns `size/6 .. size - size/6`)
/// and a full body mask. Same formula as `bench.py`'s `synthetic_batch`.
pub fn synthetic_batch(batch: usize, size: usize, device: Device) -> anyhow::Result<BatchTensors> {
    let shape = (batch, 1, size, size);
    let phase = |b: usize, i: usize, j: usize| 0.11 * i as f64 + 0.07 * j as f64 + 0.5 * b as f64;
    let x = Array4::from_shape_fn(shape, |(b, _, i, j)| (0.8 * phase(b, i, j).sin()) as f32);
    let y = Array4::from_shape_fn(shape, |(b, _, i, j)| {
        (0.8 * (phase(b, i, j) + 0.3).sin()) as f32
    });
    let (q, r) = (size / 4, size / 6);
    let lung = Array4::from_shape_fn(shape, |(_, _, i, j)| {
        f32::from(u8::from(
            (q..size - q).contains(&i) && (r..size - r).contains(&j),
        ))
    });
    let body = Array4::from_elem(shape, 1.0f32);
    Ok(BatchTensors {
        x: array_to_tensor(&x, device)?,
        stack: None,
        planes: None,
        y: array_to_tensor(&y, device)?,
        lung: array_to_tensor(&lung, device)?,
        body: array_to_tensor(&body, device)?,
    })
}

/// An NCCT-like volume `[slices, size, size]` in HU from -1000 to 200
/// (`-1000 + 1200 (0.5 + 0.5 sin(0.05 x + 0.03 y + 0.2 z))`), 0.7 x 0.7 x 1 mm. Same formula
/// as `bench.py`'s inference input.
pub fn synthetic_volume(slices: usize, size: usize) -> anyhow::Result<Volume> {
    let data = Array3::from_shape_fn((slices, size, size), |(z, y, x)| {
        let v = 0.05f32 * x as f32 + 0.03 * y as f32 + 0.2 * z as f32;
        -1000.0 + 1200.0 * (0.5 + 0.5 * v.sin())
    });
    Ok(Volume::new(data, Geometry::identity([0.7, 0.7, 1.0]))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn batch_values_follow_the_formula() {
        let b = synthetic_batch(2, 24, Device::Cpu).unwrap();
        assert_eq!(b.x.size(), vec![2, 1, 24, 24]);
        let at = |t: &tch::Tensor, idx: [i64; 4]| t.double_value(&idx);
        let expect = (0.8 * (0.11 * 3.0 + 0.07 * 5.0 + 0.5f64).sin()) as f32;
        assert!((at(&b.x, [1, 0, 3, 5]) as f32 - expect).abs() < 1e-7);
        // lung: rows 6..18, columns 4..20
        assert_eq!(at(&b.lung, [0, 0, 6, 4]), 1.0);
        assert_eq!(at(&b.lung, [0, 0, 5, 4]), 0.0);
        assert_eq!(at(&b.lung, [0, 0, 6, 20]), 0.0);
        assert_eq!(
            b.lung.sum(Kind::Double).double_value(&[]),
            2.0 * 12.0 * 16.0
        );
    }
}
