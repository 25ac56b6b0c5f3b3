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
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
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
