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
