//! Compiles `csrc/shim.cpp` and `csrc/dist.cpp` (c10d; with `csrc/gloo_decl` for the gloo
//! names its Gloo header mentions) against the libtorch headers of the libtorch tch links
//! (`LIBTORCH`, as for torch-sys; `.cargo/config.toml` points it at `.venv/libtorch`), and
//! adds an rpath for its `lib/` so this crate's own test binaries run without
//! `LD_LIBRARY_PATH` (the crates that link it get theirs from `scripts/torch-build.rs`).

use std::path::PathBuf;

fn main() {
    for file in ["shim.cpp", "dist.cpp", "protect.h", "gloo_decl"] {
        println!("cargo:rerun-if-changed=csrc/{file}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let Some(torch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        panic!("LIBTORCH is not set: run `make setup` (scripts/setup-libtorch.sh)");
    };
    let torch = torch.canonicalize().unwrap_or(torch);
    let include = std::env::var_os("LIBTORCH_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| torch.clone())
        .join("include");
    check_gloo_header(&include);
    // torch-sys's default: the new C++11 ABI, as the PyPI wheels since torch 2.7.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/shim.cpp")
        .file("csrc/dist.cpp")
        .include(&include)
        .include("csrc/gloo_decl")
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // ProcessGroupGloo.hpp is compiled only with this (the wheel's libtorch has Gloo)
        .define("USE_C10D_GLOO", None)
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("torchext_shim");
    let lib = torch.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// FNV-1a (64 bit) of `ProcessGroupGloo.hpp` in the torch 2.11.0 wheels (CPU and CUDA alike).
const GLOO_HEADER_FNV1A: u64 = 0x7c17_793d_5e6e_da8f;

/// `csrc/gloo_decl/` declares the gloo names of exactly this header, and is layout-safe only
/// while the header holds gloo objects behind pointers (see `csrc/gloo_decl/gloo/README.md`).
/// A libtorch whose header differs must be re-checked before it is built against.
fn check_gloo_header(include: &std::path::Path) {
    let path = include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp");
    println!("cargo:rerun-if-changed={}", path.display());
    let Ok(bytes) = std::fs::read(&path) else {
        panic!("{}: missing: not a libtorch with c10d", path.display());
    };
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    if hash != GLOO_HEADER_FNV1A {
        panic!(
            "{} changed (FNV-1a {hash:#018x}, expected {GLOO_HEADER_FNV1A:#018x}): check that it \
             still holds every gloo object behind a pointer and that csrc/gloo_decl declares \
             what it mentions (csrc/gloo_decl/gloo/README.md), then update GLOO_HEADER_FNV1A in \
             crates/torchext/build.rs",
            path.display()
        );
    }
}
