//! Build script shared by the crates that link libtorch (model, train, infer, cli).
//!
//! 1. Adds an rpath for libtorch's `lib/` and for the NVIDIA runtime wheels beside it, so
//!    binaries and test executables run without `LD_LIBRARY_PATH`.
//! 2. When the libtorch in use has `libtorch_cuda.so`, links it with `--no-as-needed`:
//!    nothing in our code references its symbols directly, so the linker would drop it and the
//!    binary would silently run on the CPU (tch-rs issue 980).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let Some(torch) = libtorch_dir() else {
        println!("cargo:warning=libtorch not found: run `make setup` (scripts/setup-libtorch.sh)");
        return;
    };
    let lib = torch.join("lib");
    rpath(&lib);
    // The CUDA runtime wheels (nvidia-cuda-runtime, nvidia-cuda-cupti, and with the full
    // install cuDNN, cuBLAS, ...) live in site-packages/nvidia/<name>/lib.
    if let Some(site) = torch.parent() {
        for nvidia_lib in nvidia_lib_dirs(&site.join("nvidia")) {
            rpath(&nvidia_lib);
        }
    }
    let cuda = link_cuda(&torch);
    // what the binary says at start-up (model::device::CUDA_LINKED)
    println!("cargo:rustc-env=NCCT2CTPA_CUDA_LINKED={}", u8::from(cuda));
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!(
            "cargo:warning=linking libtorch_cuda: the binaries will use CUDA when a GPU is present"
        );
    }
}

/// Whether to force-link `libtorch_cuda`: only when the libtorch in use can actually load it.
/// The CPU setup installs the CUDA wheel of torch *without* its CUDA dependencies
/// (cuDNN, cuBLAS, cuSPARSE...), so its `libtorch_cuda.so` cannot be loaded there; the full
/// install (`NCCT2CTPA_TORCH=full make setup`, or `LIBTORCH_USE_PYTORCH=1`) brings cuDNN.
/// `NCCT2CTPA_LINK_CUDA=0|1` overrides the detection.
fn link_cuda(torch: &Path) -> bool {
    println!("cargo:rerun-if-env-changed=NCCT2CTPA_LINK_CUDA");
    match std::env::var("NCCT2CTPA_LINK_CUDA").as_deref() {
        Ok("0") => return false,
        Ok("1") => return true,
        _ => {}
    }
    if !torch.join("lib").join("libtorch_cuda.so").exists() {
        return false;
    }
    let Some(site) = torch.parent() else {
        return false;
    };
    nvidia_lib_dirs(&site.join("nvidia")).iter().any(|dir| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libcudnn.so"))
            })
            .unwrap_or(false)
    })
}

fn libtorch_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let dir = PathBuf::from(dir);
        return dir.canonicalize().ok();
    }
    if std::env::var("LIBTORCH_USE_PYTORCH").is_ok() {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import torch, os; print(os.path.dirname(torch.__file__))",
            ])
            .output()
            .ok()?;
        let path = String::from_utf8(out.stdout).ok()?;
        return PathBuf::from(path.trim()).canonicalize().ok();
    }
    None
}

fn nvidia_lib_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return dirs;
    };
    for entry in entries.flatten() {
        let lib = entry.path().join("lib");
        if lib.is_dir() {
            dirs.push(lib);
        }
    }
    dirs.sort();
    dirs
}

fn rpath(dir: &Path) {
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
}
