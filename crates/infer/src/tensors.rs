//! Moving arrays between the host (`ndarray`) and libtorch.

use anyhow::Context;
use ndarray::Array4;
use tch::{Device, Kind, Tensor};

/// A contiguous f32 array as a tensor on `device`.
pub fn array_to_tensor(a: &Array4<f32>, device: Device) -> anyhow::Result<Tensor> {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let data = a
        .as_slice()
        .ok_or_else(|| anyhow::anyhow!("array is not contiguous"))?;
    Ok(Tensor::from_slice(data)
        .view(shape.as_slice())
        .to_device(device))
}

/// A 4D tensor copied to a host f32 array.
pub fn tensor_to_array(t: &Tensor) -> anyhow::Result<Array4<f32>> {
    let size = t.size();
    if size.len() != 4 {
        anyhow::bail!("expected a 4D tensor, got {size:?}");
    }
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let v: Vec<f32> = Vec::<f32>::try_from(t.view(-1)).context("copying a tensor to the host")?;
    let shape = (
        size[0] as usize,
        size[1] as usize,
        size[2] as usize,
        size[3] as usize,
    );
    Ok(Array4::from_shape_vec(shape, v)?)
}
