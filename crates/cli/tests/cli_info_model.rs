//! `ncct2ctpa info --model`: parameter counts of each preset, as the product owner specified
//! them (G 61M +- 2M and R about 0.07M by default; RegGAN's R 2.06M in the `reggan` preset).

use std::process::Command;

fn info_model(preset: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
        .args(["info", "--model", "--preset", preset, "--json"])
        .output()
        .expect("running ncct2ctpa");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info --model --json prints JSON")
}

fn trainable(v: &serde_json::Value, net: &str) -> f64 {
    v["summary"][net]["trainable"]
        .as_f64()
        .unwrap_or_else(|| panic!("no count for {net}: {v}"))
}

#[test]
fn default_preset_counts_match_the_design() {
    let v = info_model("default");
    let g = trainable(&v, "generator");
    assert!((59e6..=63e6).contains(&g), "G has {g} parameters");
    let r = trainable(&v, "registration");
    assert!((0.05e6..=0.09e6).contains(&r), "R has {r} parameters");
    assert!(trainable(&v, "discriminator") > 1e5);
}

#[test]
fn reggan_preset_has_reggans_registration_net_and_tiny_is_small() {
    let r = trainable(&info_model("reggan"), "registration");
    assert!(
        (1.9e6..=2.2e6).contains(&r),
        "RegGAN's R has {r} parameters"
    );
    let tiny = info_model("tiny");
    assert!(trainable(&tiny, "generator") < 1e6);
}

#[test]
fn unknown_preset_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
        .args(["info", "--model", "--preset", "huge"])
        .output()
        .expect("running ncct2ctpa");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("huge"), "stderr: {err}");
}

/// #13 item 3: a reader that closes the pipe early (`ncct2ctpa info ... | head -1`) is not a
/// crash: the rest of the output is dropped, the exit code is 0, nothing panics.
#[test]
fn a_closed_pipe_is_not_a_crash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ncct2ctpa"))
        .args(["info", "--model", "--preset", "tiny"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader went away before the first line
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
