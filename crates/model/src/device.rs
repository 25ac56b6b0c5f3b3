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

/// Whether this binary was linked against libtorch_cuda (set by the build script,
/// `scripts/torch-build.rs`): without it, it runs on the CPU even where a GPU is present.
pub const CUDA_LINKED: bool = match option_env!("NCCT2CTPA_CUDA_LINKED") {
    Some(v) => matches!(v.as_bytes(), [b'1']),
    None => false,
};

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
            if !CUDA_LINKED {
                bail!(
                    "device {spec:?}: this binary was built without libtorch_cuda (a CPU build); \
                     build the GPU bundle (`make gpu-bundle`, README \"GPU servers\") or use \
                     --device cpu"
                );
            }
            if !cuda {
                bail!(
                    "device {spec:?}: CUDA is not available here (no GPU or no driver); use \
                     --device cpu"
                );
            }
            if index >= count {
                bail!("device {spec:?}: only {count} CUDA device(s) present (indices 0..{count})");
            }
            Device::Cuda(index)
        }
    };
    if !CUDA_LINKED {
        tracing::info!("CPU-only build: libtorch_cuda was not linked, so no GPU will be used");
    }
    tracing::info!(
        device = ?device,
        cuda_linked = CUDA_LINKED,
        cuda_available = cuda,
        cudnn_available = cudnn,
        cuda_device_count = count,
        "libtorch device selected"
    );
    Ok(device)
}

#[cfg(test)]
mod cuda_link_tests {
    use super::*;

    /// A CPU build says so when CUDA is asked for (the start-up line logs it too).
    #[test]
    fn a_cpu_build_refuses_cuda_naming_the_gpu_bundle() {
        if CUDA_LINKED {
            return; // a GPU build: covered by scripts/gpu-check.sh
        }
        let err = select("cuda").unwrap_err().to_string();
        assert!(
            err.contains("without libtorch_cuda") && err.contains("gpu-bundle"),
            "{err}"
        );
        assert_eq!(select("auto").unwrap(), Device::Cpu);
    }
}
