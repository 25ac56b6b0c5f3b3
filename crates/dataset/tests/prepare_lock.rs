//! Two `prepare` runs into one folder: the second fails at once naming the folder and the
//! holder; after release it succeeds; the lock of a killed process does not block.
//!
//! The cross-process tests run a second process: this test binary itself, filtered to the
//! ignored [`hold_lock_child`] test, which takes the lock, says so on stdout and waits to be
//! killed (as ripgrep's and cargo's tests drive real processes).

use dataset::manifest::AlignMode;
use dataset::phantom::{write_dataset, PhantomConfig, WriteOptions};
use dataset::prepare::lock::{lock_output, LOCK_FILE};
use dataset::prepare::{prepare, PrepareError, PrepareOptions};
use dataset::raw::discover;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Environment variable naming the folder the child process locks.
const CHILD_DIR: &str = "PREPARE_LOCK_TEST_DIR";

/// Not a test: the second process of the tests below (does nothing when run directly).
#[test]
#[ignore = "helper process for the cross-process lock tests"]
fn hold_lock_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let _lock = lock_output(Path::new(&dir)).unwrap();
    println!("LOCKED {}", std::process::id());
    std::thread::sleep(std::time::Duration::from_secs(120));
}

/// Starts the child holding the lock on `dir`; returns once it holds it.
fn child_holding(dir: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["hold_lock_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let locked = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("LOCKED"));
    assert!(locked, "the child process never took the lock");
    child
}

fn options() -> PrepareOptions {
    let mut o = PrepareOptions {
        jobs: 1,
        ..PrepareOptions::default()
    };
    o.settings.align = AlignMode::None;
    o
}

/// One small phantom pair in `raw`.
fn phantom(raw: &Path) {
    let opts = WriteOptions {
        cases: 1,
        overwrite: false,
        preview: false,
    };
    write_dataset(raw, &PhantomConfig::default(), &opts, &|_| {}).unwrap();
}

#[test]
fn second_prepare_fails_at_once_naming_the_folder_then_succeeds_after_release() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    phantom(&raw);
    let d = discover(&raw).unwrap();
    let out = t.path().join("prepared");
    std::fs::create_dir_all(&out).unwrap();

    let held = lock_output(&out).unwrap();
    let started = std::time::Instant::now();
    let err = prepare(&d, &out, &options(), &|_| {}).unwrap_err();
    assert!(
        started.elapsed().as_secs() < 5,
        "failed at once, not after waiting"
    );
    assert!(matches!(err, PrepareError::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&out.display().to_string()),
        "names the folder: {msg}"
    );
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "names the holder: {msg}"
    );
    // Refused before touching anything: no manifest, no cases folder.
    let entries: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, [LOCK_FILE]);

    drop(held);
    let report = prepare(&d, &out, &options(), &|_| {}).unwrap();
    assert_eq!(report.manifest.cases.len(), 1);
    // The run released its lock when it returned.
    drop(lock_output(&out).unwrap());
}

#[test]
fn lock_held_by_another_process_names_it_and_is_freed_when_that_process_is_killed() {
    let t = tempfile::tempdir().unwrap();
    let mut child = child_holding(t.path());
    let err = lock_output(t.path()).unwrap_err().to_string();
    assert!(
        err.contains(&t.path().display().to_string()),
        "names the folder: {err}"
    );
    assert!(
        err.contains(&format!("pid {}", child.id())),
        "names the holding process: {err}"
    );

    // SIGKILL: no destructor runs, the lock file stays with the dead run's record in it.
    child.kill().unwrap();
    child.wait().unwrap();
    let left = std::fs::read_to_string(t.path().join(LOCK_FILE)).unwrap();
    assert!(left.contains(&format!("pid={}", child.id())), "{left}");
    let lock = lock_output(t.path()).expect("a dead process's lock does not block");
    let now = std::fs::read_to_string(lock.path()).unwrap();
    assert!(
        now.contains(&format!("pid={}", std::process::id())),
        "{now}"
    );
}
