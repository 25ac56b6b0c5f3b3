//! Regression tests of the hardening issue (#13) at the library level: the run folder's lock,
//! a checkpoint swap cut short by a kill, leftovers of killed writes, and a stop requested by
//! a signal (the flag the handlers set).

mod common;

use common::{dataset, new_run, resume_run, serial, tiny};
use std::path::Path;
use train::trainer::train;

/// `(step, loss_g, loss_d, l1)` of every train event.
fn losses(run: &Path) -> Vec<(u64, f64, f64, f64)> {
    common::events(run, "train")
        .into_iter()
        .map(|e| {
            let f = |k: &str| e[k].as_f64().unwrap();
            (
                e["step"].as_u64().unwrap(),
                f("loss_g"),
                f("loss_d"),
                f("l1"),
            )
        })
        .collect()
}

/// A run of `tiny(steps)` into `run` stopped after step `stop` (as if killed there, with the
/// checkpoint of that step written).
fn stopped_run(data: &Path, run: &Path, steps: u64, stop: u64) {
    let mut cfg = tiny(steps);
    cfg.hooks.stop_after_step = Some(stop);
    let out = train(&new_run(cfg, data, run)).unwrap();
    assert_eq!(out.steps, stop);
}

/// Item 10: a `--resume` while the run still trains is refused at once, naming the holder,
/// and the folder is left as it was (metrics.jsonl is not rewritten).
#[test]
fn a_run_folder_in_use_is_not_trained_in_twice() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    stopped_run(&data, &run, 6, 3);
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    // another process training in it: its lock is held
    let held = util::lock::lock_folder(&run, train::run_dir::RUN_LOCK).unwrap();
    let err = format!(
        "{:#}",
        train(&resume_run(&data, &run, Default::default())).unwrap_err()
    );
    assert!(
        err.contains("another process is training")
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
    drop(held);
    let out = train(&resume_run(&data, &run, Default::default())).unwrap();
    assert_eq!((out.started_at, out.steps), (3, 6));
}

/// Item 12: a kill between the renames of the first checkpoint leaves the complete checkpoint
/// in `.latest.new` and nothing in `latest`; resume finishes the swap and continues exactly.
/// Temporaries of killed writes are removed.
#[test]
fn an_interrupted_checkpoint_swap_is_finished_on_resume() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("killed"));
    train(&new_run(tiny(6), &data, &a)).unwrap();
    stopped_run(&data, &b, 6, 3);
    let ck = b.join("checkpoints");
    std::fs::rename(ck.join("latest"), ck.join(".latest.new")).unwrap();
    std::fs::create_dir(ck.join(".latest.old")).unwrap(); // an incomplete leftover
    let tmp_file = b.join(".metrics.jsonl.4242.0.tmp");
    std::fs::write(&tmp_file, b"half").unwrap();
    let tmp_dir = ck.join(".best.4242.1.tmp");
    std::fs::create_dir(&tmp_dir).unwrap();

    let out = train(&resume_run(&data, &b, Default::default())).unwrap();
    assert_eq!((out.started_at, out.steps), (3, 6));
    assert_eq!(losses(&a), losses(&b));
    for gone in [
        ck.join(".latest.new"),
        ck.join(".latest.old"),
        tmp_file,
        tmp_dir,
    ] {
        assert!(!gone.exists(), "{} is still there", gone.display());
    }
}

/// Item 9: a stop requested between steps (what SIGTERM, SIGINT and SIGUSR1 do) writes
/// `latest` at that step, says which signal, and the resumed run equals the uninterrupted one.
#[test]
fn a_signal_stop_checkpoints_the_step_and_resumes_exactly() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("signalled"));
    train(&new_run(tiny(6), &data, &a)).unwrap();
    let mut cfg = tiny(6);
    cfg.log.checkpoint_every = 1000; // only the stop writes a checkpoint before the end
    let spec = new_run(cfg, &data, &b);
    spec.stop.request(signal_hook::consts::SIGTERM);
    let out = train(&spec).unwrap();
    assert_eq!((out.steps, out.stopped), (1, Some("SIGTERM")));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("checkpoints/latest/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 1);
    let stopped = common::events(&b, "stopped");
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0]["signal"], "SIGTERM");

    let out = train(&resume_run(&data, &b, Default::default())).unwrap();
    assert_eq!((out.started_at, out.steps, out.stopped), (1, 6, None));
    // the straight run checkpoints every 3 steps, the signalled one did not: the curves
    // still agree bit for bit
    assert_eq!(losses(&a), losses(&b));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Item 11: the run records its dataset; a resume on other data is refused unless told, and
/// the same dataset copied elsewhere (node-local scratch) is accepted.
#[test]
fn a_resume_continues_on_its_own_data_only() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    stopped_run(&data, &run, 9, 3);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(record["manifest_sha256"].as_str().unwrap().len(), 64);

    let other = dataset::fixtures::synthetic_dataset(&tmp.path().join("other"), 2).unwrap();
    let err = format!(
        "{:#}",
        train(&resume_run(&other, &run, Default::default())).unwrap_err()
    );
    assert!(
        err.contains("not the prepared dataset this run started on")
            && err.contains("--allow-other-data"),
        "{err}"
    );

    let copy = tmp.path().join("scratch-copy");
    copy_dir(&data, &copy);
    let hooks = train::config::TestHooks {
        stop_after_step: Some(6),
        ..Default::default()
    };
    let out = train(&resume_run(&copy, &run, hooks)).unwrap();
    assert_eq!((out.started_at, out.steps), (3, 6));

    let mut told = resume_run(&other, &run, Default::default());
    if let train::Start::Resume {
        allow_other_data, ..
    } = &mut told.start
    {
        *allow_other_data = true;
    }
    let out = train(&told).unwrap();
    assert_eq!((out.started_at, out.steps), (6, 9));
}

/// #13 item 1: a checkpoint holding one NaN weight is refused at load, naming the file and
/// the tensor, by `--resume` and by inference alike (before: the resumed step segfaulted).
#[test]
fn a_checkpoint_with_a_nan_weight_is_refused_at_load() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    stopped_run(&data, &run, 6, 3);
    let file = run.join("checkpoints/latest/registration.safetensors");
    let mut tensors = tch::Tensor::read_safetensors(&file).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let name = tensors[0].0.clone();
    let _ = tensors[0].1.view([-1]).narrow(0, 0, 1).fill_(f64::NAN);
    tch::Tensor::write_safetensors(&tensors, &file).unwrap();
    // as written by a diverged run: its checksums agree with the NaN
    infer::checkpoint::write_checksums(&run.join("checkpoints/latest")).unwrap();
    let err = format!(
        "{:#}",
        train(&resume_run(&data, &run, Default::default())).unwrap_err()
    );
    assert!(
        err.contains("registration.safetensors") && err.contains(&name) && err.contains("NaN"),
        "{err}"
    );

    let g = run.join("checkpoints/latest/generator.safetensors");
    let tensors = tch::Tensor::read_safetensors(&g).unwrap();
    let _ = tensors[0].1.view([-1]).narrow(0, 0, 1).fill_(f64::INFINITY);
    tch::Tensor::write_safetensors(&tensors, &g).unwrap();
    infer::checkpoint::write_checksums(&run.join("checkpoints/latest")).unwrap();
    let err = format!(
        "{:#}",
        infer::checkpoint::load_generator(&run.join("checkpoints/latest"), tch::Device::Cpu)
            .unwrap_err()
    );
    assert!(
        err.contains("generator.safetensors") && err.contains("non-finite"),
        "{err}"
    );
}

/// #13 item 2: a crop larger than every training slice is refused before the run folder is
/// created (it was accepted silently).
#[test]
fn a_crop_larger_than_the_slices_is_refused_before_the_run_folder_exists() {
    let _serial = serial();
    let data = dataset(); // slices of 32 x 40
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = tiny(2);
    cfg.data.crop_size = 64;
    let err = format!("{:#}", train(&new_run(cfg, &data, &run)).unwrap_err());
    assert!(
        err.contains("data.crop_size = 64") && err.contains("at most 32"),
        "{err}"
    );
    assert!(!run.exists(), "the run folder was created");
}

/// #13 item 7: a bit flip in a checkpoint is caught at load (checksums.json, written with
/// every checkpoint): `--resume` falls back to the newest intact checkpoint and says so, and
/// inference refuses the damaged file by name.
#[test]
fn a_damaged_checkpoint_is_caught_and_resume_falls_back_to_an_intact_one() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("damaged"));
    train(&new_run(tiny(6), &data, &a)).unwrap();
    stopped_run(&data, &b, 6, 3);
    // validation at step 3 wrote best at step 3 too
    let best: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("checkpoints/best/state.json")).unwrap())
            .unwrap();
    assert_eq!(best["step"], 3);
    let g = b.join("checkpoints/latest/generator.safetensors");
    let mut bytes = std::fs::read(&g).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // one bit in the last weight
    std::fs::write(&g, &bytes).unwrap();

    let err = format!(
        "{:#}",
        infer::checkpoint::load_generator(&b.join("checkpoints/latest"), tch::Device::Cpu)
            .unwrap_err()
    );
    assert!(
        err.contains("generator.safetensors") && err.contains("damaged"),
        "{err}"
    );

    let out = train(&resume_run(&data, &b, Default::default())).unwrap();
    assert_eq!((out.started_at, out.steps), (3, 6));
    assert_eq!(losses(&a), losses(&b));
    let resumed = common::events(&b, "resume");
    assert!(
        resumed.last().unwrap()["from"]
            .as_str()
            .unwrap()
            .ends_with("best"),
        "{resumed:?}"
    );
}

/// The run's own records, damaged, are errors naming the file (not a silent pass): a
/// `dataset.json` that is not JSON stops a resume; a `checksums.json` that is not JSON stops
/// inference from that checkpoint.
#[test]
fn damaged_run_records_are_errors_naming_the_file() {
    let _serial = serial();
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    stopped_run(&data, &run, 6, 3);
    std::fs::write(run.join("dataset.json"), b"{ not json").unwrap();
    let err = format!(
        "{:#}",
        train(&resume_run(&data, &run, Default::default())).unwrap_err()
    );
    assert!(err.contains("dataset.json"), "{err}");

    let latest = run.join("checkpoints/latest");
    std::fs::write(latest.join("checksums.json"), b"[1, 2").unwrap();
    let err = format!(
        "{:#}",
        infer::checkpoint::load_generator(&latest, tch::Device::Cpu).unwrap_err()
    );
    assert!(err.contains("checksums.json"), "{err}");
}
