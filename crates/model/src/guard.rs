//! libtorch errors as errors, not crashes.
//!
//! tch's infallible calls panic on a libtorch error (out of memory above all, on user data
//! that does not fit). [`catch_torch`] runs a piece of work (a training step, a validation, a
//! volume's inference) and turns such a panic into an error that says what was running, what
//! libtorch said, and, for out-of-memory, what to change. While it runs, the process's panic
//! hook ([`install_panic_hook`]) stays quiet about the panic it catches; any other panic (a
//! bug) is still reported as one.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// Whether this thread is inside [`catch_torch`].
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work`; a panic inside it (a libtorch error through tch) becomes an error naming
/// `what`, libtorch's message and, for out-of-memory, a hint.
pub fn catch_torch<T>(what: &str, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let outer = CATCHING.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(work));
    CATCHING.with(|c| c.set(outer));
    match result {
        Ok(r) => r,
        Err(payload) => {
            let message = payload_text(&*payload);
            tracing::debug!("{what}: caught a libtorch panic: {message}");
            Err(anyhow::anyhow!(
                "{what}: libtorch failed: {}{}",
                first_line(&message),
                hint(&message)
            ))
        }
    }
}

/// Installs a panic hook that is silent (a debug log line) for panics [`catch_torch`] turns
/// into errors, and prints any other one as the bug it is, with its location.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CATCHING.with(Cell::get) {
            tracing::debug!("libtorch panic (reported as an error): {info}");
        } else {
            default(info);
        }
    }));
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown error".into()
    }
}

/// libtorch's messages carry a C++ backtrace after the first line.
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message).trim()
}

/// What to change, for the errors a user's settings cause.
fn hint(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("out of memory") || m.contains("cannot allocate") || m.contains("alloc") {
        " (out of memory: lower data.batch_size or data.crop_size, or set amp = \"bf16\" on a \
         GPU; for predict, lower --batch-size)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn a_libtorch_error_becomes_an_error_naming_the_work() {
        install_panic_hook();
        let err = catch_torch("step 3", || {
            let t = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
            let _ = t.view([7]); // libtorch: shape '[7]' is invalid for input of size 6
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("step 3: libtorch failed:"), "{err}");
        assert!(err.contains("[7]"), "{err}");
        assert!(!err.contains('\n'), "the C++ backtrace is left out: {err}");
        assert_eq!(catch_torch("fine", || Ok(5)).unwrap(), 5);
    }

    #[test]
    fn out_of_memory_comes_with_a_hint() {
        let err = catch_torch("step 1", || -> anyhow::Result<()> {
            panic!("CUDA out of memory. Tried to allocate 20.00 GiB\nbacktrace")
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("batch_size") && err.contains("bf16"), "{err}");
    }
}
