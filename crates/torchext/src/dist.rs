//! PyTorch's distributed engine, c10d, as libtorch exports it (the C++ side is
//! `csrc/dist.cpp`): the rendezvous store ([`Store`]: a `TCPStore`, optionally under a
//! `PrefixStore`) and a Gloo process group ([`ProcessGroup`]) with the three collectives data
//! parallelism needs (all-reduce, broadcast, barrier). The same objects `torch.distributed`
//! builds for `init_process_group("gloo", init_method="env://")`, so the transport, the
//! timeouts and the failure detection are PyTorch's own.
//!
//! Every call blocks until its collective finished on this rank, or fails with c10d's message
//! (a peer that closed its connection, a timeout) as a [`TorchExtError`].

use crate::{check, raws, TorchExtError};
use std::ffi::{c_char, c_int, CString};
use std::time::Duration;
use tch::Tensor;
use tracing::debug;

#[repr(C)]
struct RawStore {
    _private: [u8; 0],
}

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

mod ffi {
    use super::*;
    use crate::Raw;
    extern "C" {
        pub fn torchext_store_tcp(
            host: *const c_char,
            port: u16,
            is_server: bool,
            world_size: c_int,
            timeout_ms: i64,
            prefix: *const c_char,
            out: *mut *mut RawStore,
        ) -> *mut c_char;
        pub fn torchext_store_set(
            s: *mut RawStore,
            key: *const c_char,
            data: *const u8,
            n: usize,
        ) -> *mut c_char;
        pub fn torchext_store_get(
            s: *mut RawStore,
            key: *const c_char,
            data: *mut *mut u8,
            n: *mut usize,
        ) -> *mut c_char;
        pub fn torchext_store_add(
            s: *mut RawStore,
            key: *const c_char,
            delta: i64,
            out: *mut i64,
        ) -> *mut c_char;
        pub fn torchext_store_check(
            s: *mut RawStore,
            key: *const c_char,
            out: *mut bool,
        ) -> *mut c_char;
        pub fn torchext_store_free(s: *mut RawStore);
        pub fn torchext_free_bytes(data: *mut u8);
        pub fn torchext_group_gloo(
            s: *mut RawStore,
            rank: c_int,
            size: c_int,
            timeout_ms: i64,
            ifname: *const c_char,
            out: *mut *mut RawGroup,
        ) -> *mut c_char;
        pub fn torchext_group_allreduce(
            g: *mut RawGroup,
            ts: *const Raw,
            n: usize,
            op: c_int,
        ) -> *mut c_char;
        pub fn torchext_group_broadcast(
            g: *mut RawGroup,
            ts: *const Raw,
            n: usize,
            root: c_int,
        ) -> *mut c_char;
        pub fn torchext_group_barrier(g: *mut RawGroup) -> *mut c_char;
        pub fn torchext_group_free(g: *mut RawGroup);
    }
}

fn c_string(op: &'static str, s: &str) -> Result<CString, TorchExtError> {
    CString::new(s).map_err(|_| TorchExtError::Invalid {
        op,
        problem: format!("{s:?} contains a NUL byte"),
    })
}

fn millis(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

/// Where a [`Store`] is and who serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreAddr {
    pub host: String,
    pub port: u16,
    /// This process runs the store's server (rank 0 without torchrun's agent store).
    pub is_server: bool,
    /// The number of processes that will connect.
    pub world_size: usize,
    /// How long a connection or a `get` waits.
    pub timeout: Duration,
    /// Keys go under this prefix (a `PrefixStore`): torchrun's `/worker/attempt_N`.
    pub prefix: Option<String>,
}

/// c10d's key-value store for the rendezvous (a `TCPStore`, as `env://` makes it).
#[derive(Debug)]
pub struct Store {
    raw: *mut RawStore,
}

// SAFETY: c10d's TCPStore is used from many threads in torch (its client serialises
// requests behind a mutex); the handle is only freed in Drop.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Connects to (and, when `addr.is_server`, serves) the store at `addr`, waiting up to
    /// `addr.timeout` for the server and for all `world_size` processes to join.
    pub fn connect(addr: &StoreAddr) -> Result<Self, TorchExtError> {
        const OP: &str = "c10d::TCPStore";
        let host = c_string(OP, &addr.host)?;
        let prefix = addr
            .prefix
            .as_deref()
            .map(|p| c_string(OP, p))
            .transpose()?;
        let world = c_int::try_from(addr.world_size).map_err(|_| TorchExtError::Invalid {
            op: OP,
            problem: format!("world size {} is too large", addr.world_size),
        })?;
        debug!(?addr, "connecting to the c10d store");
        let mut raw = std::ptr::null_mut();
        // SAFETY: the strings live across the call; `raw` receives a new handle on success.
        let msg = unsafe {
            ffi::torchext_store_tcp(
                host.as_ptr(),
                addr.port,
                addr.is_server,
                world,
                millis(addr.timeout),
                prefix.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
                &mut raw,
            )
        };
        check(OP, msg)?;
        Ok(Self { raw })
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), TorchExtError> {
        const OP: &str = "c10d::Store::set";
        let key = c_string(OP, key)?;
        // SAFETY: live handle; key and value are borrowed for the call.
        check(OP, unsafe {
            ffi::torchext_store_set(self.raw, key.as_ptr(), value.as_ptr(), value.len())
        })
    }

    /// The value of `key`, waiting up to the store's timeout for another process to set it.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, TorchExtError> {
        const OP: &str = "c10d::Store::get";
        let key = c_string(OP, key)?;
        let (mut data, mut n) = (std::ptr::null_mut(), 0usize);
        // SAFETY: live handle; on success `data` is a malloc'ed buffer of `n` bytes, copied
        // and freed here.
        check(OP, unsafe {
            ffi::torchext_store_get(self.raw, key.as_ptr(), &mut data, &mut n)
        })?;
        let out = unsafe { std::slice::from_raw_parts(data, n) }.to_vec();
        unsafe { ffi::torchext_free_bytes(data) };
        Ok(out)
    }

    /// Adds `delta` to the counter `key` (0 when unset) and returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64, TorchExtError> {
        const OP: &str = "c10d::Store::add";
        let key = c_string(OP, key)?;
        let mut out = 0;
        // SAFETY: live handle; `out` is written on success.
        check(OP, unsafe {
            ffi::torchext_store_add(self.raw, key.as_ptr(), delta, &mut out)
        })?;
        Ok(out)
    }

    /// Whether `key` is set (without waiting).
    pub fn contains(&self, key: &str) -> Result<bool, TorchExtError> {
        const OP: &str = "c10d::Store::check";
        let key = c_string(OP, key)?;
        let mut out = false;
        // SAFETY: live handle; `out` is written on success.
        check(OP, unsafe {
            ffi::torchext_store_check(self.raw, key.as_ptr(), &mut out)
        })?;
        Ok(out)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle came from torchext_store_tcp and is freed once.
        unsafe { ffi::torchext_store_free(self.raw) }
    }
}

/// The reduction of an all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// A c10d process group on the Gloo backend: `size` processes, this one `rank`.
#[derive(Debug)]
pub struct ProcessGroup {
    raw: *mut RawGroup,
    rank: usize,
    size: usize,
}

// SAFETY: c10d backends are driven from any thread in torch; the trainer uses this one from
// its own thread only, and the handle is only freed in Drop.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the Gloo group over `store` (every rank calls this; it returns once all are
    /// connected). `interface` is the network interface to use (`GLOO_SOCKET_IFNAME`); by
    /// default, the address this machine's hostname resolves to. `timeout` bounds every
    /// collective: a peer that neither answers nor closes its connection makes the call
    /// fail after it.
    pub fn gloo(
        store: &Store,
        rank: usize,
        size: usize,
        timeout: Duration,
        interface: Option<&str>,
    ) -> Result<Self, TorchExtError> {
        const OP: &str = "c10d::ProcessGroupGloo";
        if rank >= size {
            return Err(TorchExtError::Invalid {
                op: OP,
                problem: format!("rank {rank} is not below the world size {size}"),
            });
        }
        let ifname = interface.map(|i| c_string(OP, i)).transpose()?;
        let (r, n) = (rank as c_int, size as c_int);
        let mut raw = std::ptr::null_mut();
        // SAFETY: live store handle; the interface name lives across the call.
        let msg = unsafe {
            ffi::torchext_group_gloo(
                store.raw,
                r,
                n,
                millis(timeout),
                ifname.as_ref().map_or(std::ptr::null(), |i| i.as_ptr()),
                &mut raw,
            )
        };
        check(OP, msg)?;
        Ok(Self { raw, rank, size })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Reduces each tensor in place across the group (each is one collective; all run
    /// together). Every rank must pass tensors of the same shapes, dtypes and order.
    pub fn all_reduce(&self, tensors: &[&Tensor], op: ReduceOp) -> Result<(), TorchExtError> {
        if tensors.is_empty() {
            return Ok(());
        }
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
        };
        let ts = raws(tensors);
        // SAFETY: live handle; the tensors are borrowed for the (blocking) call.
        check("c10d all_reduce", unsafe {
            ffi::torchext_group_allreduce(self.raw, ts.as_ptr(), ts.len(), code)
        })
    }

    /// Overwrites each tensor with rank `root`'s, in place.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), TorchExtError> {
        if tensors.is_empty() {
            return Ok(());
        }
        let ts = raws(tensors);
        // SAFETY: live handle; the tensors are borrowed for the (blocking) call.
        check("c10d broadcast", unsafe {
            ffi::torchext_group_broadcast(self.raw, ts.as_ptr(), ts.len(), root as c_int)
        })
    }

    /// Returns once every rank called it.
    pub fn barrier(&self) -> Result<(), TorchExtError> {
        // SAFETY: live handle.
        check("c10d barrier", unsafe {
            ffi::torchext_group_barrier(self.raw)
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from torchext_group_gloo and is freed once.
        unsafe { ffi::torchext_group_free(self.raw) }
    }
}
