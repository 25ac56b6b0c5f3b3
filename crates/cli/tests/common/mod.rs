//! Helpers shared by the binary tests: run the real `ncct2ctpa` and read what it printed.

#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs the built binary with `args` and waits for it.
pub fn ncct2ctpa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
        .args(args)
        .output()
        .expect("run ncct2ctpa")
}

/// (stdout, stderr) as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A temporary path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `train` of the tiny preset on the CPU, `data` into `run`, for `steps` steps, without the
/// progress bar: the arguments every test that trains starts from (add its own after).
pub fn tiny_train<'a>(data: &'a Path, run: &'a Path, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        s(data),
        "--run",
        s(run),
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--steps",
        steps,
        "--no-progress",
    ]
}
