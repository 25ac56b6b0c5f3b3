//! Channels-last (NHWC) memory format for the step's weights and inputs, to measure whether
//! libtorch's CPU convolutions run faster on it (PyTorch: `model.to(memory_format=
//! torch.channels_last)`, `x.contiguous(memory_format=torch.channels_last)`).
//!
//! tch exposes no `MemoryFormat`, but the format is only a stride order: a 4-D tensor
//! `[n, c, h, w]` is channels-last when its strides are `[h*w*c, 1, w*c, c]`, which
//! `t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])` produces; libtorch's
//! `suggest_memory_format` reads the strides, so its kernels (oneDNN convolutions, instance
//! norm, pooling) then keep activations and gradients in NHWC as they do in PyTorch.
//! Weights are switched in place with `set_data`, so the VarStores, the optimizers and the
//! autograd graph keep the same variables.

use tch::Tensor;
use train::nets::Nets;
use train::step::BatchTensors;

/// The same values as `t` (same shape) with channels-last strides when `t` is 4-D; other
/// tensors are returned as they are (shallow copy).
pub fn channels_last(t: &Tensor) -> Tensor {
    if t.dim() == 4 {
        t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        t.shallow_clone()
    }
}

/// Whether `t` is 4-D with channels-last strides (a size-1 dimension's stride does not count).
pub fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    if size.len() != 4 {
        return false;
    }
    let [_, c, h, w] = [size[0], size[1], size[2], size[3]];
    let expect = [h * w * c, 1, w * c, c];
    (0..4).all(|i| size[i] == 1 || stride[i] == expect[i])
}

/// Switches every 4-D variable of G, R and D (convolution weights, `weight_orig` of
/// spectral norm) to channels-last in place. Returns how many were switched.
pub fn nets_to_channels_last(nets: &Nets) -> usize {
    let _guard = tch::no_grad_guard();
    let mut n = 0;
    for store in [&nets.gr_store, &nets.d_store] {
        for (name, mut var) in store.variables() {
            if var.dim() == 4 {
                let nhwc = channels_last(&var);
                var.set_data(&nhwc);
                tracing::trace!(%name, "channels-last");
                n += 1;
            }
        }
    }
    tracing::debug!(variables = n, "weights switched to channels-last");
    n
}

/// The batch with every tensor channels-last.
pub fn batch_to_channels_last(b: &BatchTensors) -> BatchTensors {
    BatchTensors {
        x: channels_last(&b.x),
        stack: b.stack.as_ref().map(channels_last),
        planes: b.planes.as_ref().map(channels_last),
        y: channels_last(&b.y),
        lung: channels_last(&b.lung),
        body: channels_last(&b.body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::synthetic_batch;
    use tch::{Device, Kind};
    use train::config::TrainConfig;
    use train::step::train_step;

    #[test]
    fn strides_are_nhwc_and_values_unchanged() {
        let _serial = crate::serial_test();
        let t = Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
        assert!(!is_channels_last(&t));
        let c = channels_last(&t);
        assert_eq!(c.size(), vec![2, 3, 4, 5]);
        assert_eq!(c.stride(), vec![60, 1, 15, 3]);
        assert!(is_channels_last(&c));
        assert_eq!((&c - &t).abs().max().double_value(&[]), 0.0);
    }

    /// The step computes the same losses in either layout (up to float reassociation in the
    /// convolution kernels), and the weights stay channels-last through the Adam updates.
    #[test]
    fn step_is_the_same_in_channels_last() {
        let _serial = crate::serial_test();
        let mut cfg = TrainConfig::with_preset("tiny").unwrap();
        cfg.seed = 3;
        let batch = synthetic_batch(2, 32, Device::Cpu).unwrap();
        let mut a = Nets::new(&cfg, Device::Cpu);
        let mut oa = a.optimizers(&cfg).unwrap();
        let mut b = Nets::new(&cfg, Device::Cpu);
        let mut ob = b.optimizers(&cfg).unwrap();
        assert!(nets_to_channels_last(&b) > 0);
        let batch_cl = batch_to_channels_last(&batch);
        assert!(is_channels_last(&batch_cl.x));
        for step in 1..=2 {
            let sa = train_step(&mut a, &mut oa, &batch, &cfg, step, 1.0, false).unwrap();
            let sb = train_step(&mut b, &mut ob, &batch_cl, &cfg, step, 1.0, false).unwrap();
            assert!(
                (sa.loss_g - sb.loss_g).abs() <= 1e-4 * sa.loss_g.abs().max(1.0),
                "{sa:?} {sb:?}"
            );
            assert!(
                (sa.loss_d - sb.loss_d).abs() <= 1e-4 * sa.loss_d.abs().max(1.0),
                "{sa:?} {sb:?}"
            );
        }
        let vb = b.gr_store.variables();
        let four_d: Vec<_> = vb.values().filter(|t| t.dim() == 4).collect();
        assert!(!four_d.is_empty());
        assert!(four_d.iter().all(|t| is_channels_last(t)));
    }
}
