//! Choosing the libtorch device from the command line's `--device`.
//!
//! The binary links libtorch_cuda when the libtorch in use has it (see
//! `scripts/torch-build.rs`); if it did not, `tch::Cuda::is_available()` is false even on a GPU
//! machine, so the availability and the chosen device are logged at info at start-up.

use anyhow::{bail, Context};
use tch::{Cuda, Device};

/// What the `--device` specification asks for, before asking libtorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when CUDA is available, else the CPU.
    Auto,
    Cpu,
    /// A CUDA device by index (`cuda` means `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses "auto", "cpu", "cuda" or "cuda:N" (case-insensitive, surrounding blanks ignored).
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let s = spec.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(index) => {
                    let index = index.parse::<usize>().with_context(|| {
                        format!("device {spec:?}: {index:?} is not a CUDA device index")
                    })?;
                    Ok(DeviceSpec::Cuda(index))
                }
                None => bail!("unknown device {spec:?}: expected auto, cpu, cuda or cuda:N"),
            },
        }
    }
}

/// Resolves `spec` ("auto", "cpu", "cuda", "cuda:N") to a device, checking that a requested
/// CUDA device exists, and logs the choice with CUDA/cuDNN availability and the device count.
pub fn select(spec: &str) -> anyhow::Result<Device> {
    let parsed = DeviceSpec::parse(spec)?;
    let cuda = Cuda::is_available();
    let cudnn = Cuda::cudnn_is_available();
    let count = if cuda {
        Cuda::device_count().max(0) as usize
    } else {
        0
    };
    let device = match parsed {
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Auto if cuda && count > 0 => Device::Cuda(0),
        DeviceSpec::Auto => Device::Cpu,
        DeviceSpec::Cuda(index) => {
            if !cuda {
                bail!(
                    "device {spec:?}: CUDA is not available to this build (no GPU, no driver, or \
                     a CPU-only libtorch: see the README's GPU section); use --device cpu"
                );
            }
            if index >= count {
                bail!("device {spec:?}: only {count} CUDA device(s) present (indices 0..{count})");
            }
            Device::Cuda(index)
        }
    };
    tracing::info!(
        device = ?device,
        cuda_available = cuda,
        cudnn_available = cudnn,
        cuda_device_count = count,
        "libtorch device selected"
    );
    Ok(device)
}
