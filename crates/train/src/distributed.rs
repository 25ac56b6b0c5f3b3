//! Data-parallel training on PyTorch's distributed engine (c10d, through [`torchext::dist`]),
//! launched like any PyTorch job: by `torchrun` (its environment: `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`,
//! `TORCHELASTIC_USE_AGENT_STORE`, `TORCHELASTIC_RESTART_COUNT`) or by SLURM's `srun`
//! (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS` else `SLURM_NTASKS`, `SLURM_LOCALID`, with
//! `MASTER_ADDR`/`MASTER_PORT` exported by the job script). With none of these, or a world of
//! one, training is one process exactly as before.
//!
//! The semantics are `DistributedDataParallel`'s, adapted to the two-network GAN step:
//! - rank 0's weights and buffers (the spectral-norm vectors included) are broadcast when the
//!   run starts or resumes ([`Distributed::broadcast_from_leader`]);
//! - after each backward pass the gradients are averaged across ranks in flat buckets of about
//!   25 MB ([`Distributed::average_gradients`]), before the gated Adam update;
//! - the step's loss terms, statistics and stop votes travel in one more all-reduce, so every
//!   rank sees the same non-finite verdict and the same stop decision after the same step
//!   (see `crate::step`);
//! - each rank reads its own shard of every global batch (`dataset::sampler::Shard`);
//! - rank 0 alone writes the run folder (logs, validation, samples, checkpoints); the others
//!   wait at a barrier.
//!
//! A peer that dies makes the others' next collective fail at once (its connection closes); a
//! peer that hangs makes it fail after the timeout. Either way every surviving rank exits
//! with an error naming the ranks that did not report the failure themselves
//! ([`Distributed::failure`]).

use anyhow::{bail, Context};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};
use torchext::dist::{ProcessGroup, ReduceOp, Store, StoreAddr};

/// Who started the processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `torchrun` (or anything that sets its environment, as `torch.distributed`'s `env://`).
    Torchrun,
    /// SLURM's `srun`, without torchrun.
    Slurm,
}

/// This process's place in a multi-process run, read from the launcher's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: usize,
    pub world_size: usize,
    /// Rank on this machine (the CUDA device index a GPU run uses).
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent runs the store; no rank serves it.
    pub agent_store: bool,
    /// torchrun's restart count (keys of each attempt live under their own prefix).
    pub restart_count: u64,
}

/// The gradient bucket size of the all-reduce (torch DDP's `bucket_cap_mb` default).
pub const BUCKET_BYTES: usize = 25 * 1024 * 1024;

impl Launch {
    /// The launch of this process (`None`: a single process, as without a launcher).
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Self::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let num = |key: &str| -> anyhow::Result<Option<usize>> {
            var(key)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        anyhow::anyhow!("{key}={v:?} is not a non-negative whole number")
                    })
                })
                .transpose()
        };
        let (launcher, rank, world, local_rank, local_world) =
            if var("RANK").is_some() || var("WORLD_SIZE").is_some() {
                let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?) else {
                    bail!("RANK and WORLD_SIZE must be set together (torchrun sets both)");
                };
                let local = num("LOCAL_RANK")?.unwrap_or(0);
                let local_world = num("LOCAL_WORLD_SIZE")?.unwrap_or(1);
                (Launcher::Torchrun, rank, world, local, local_world)
            } else if let (Some(rank), Some(world)) = (
                num("SLURM_PROCID")?,
                // the srun step's task count (SLURM_NTASKS is also set in the batch script
                // itself, where one process runs)
                match num("SLURM_STEP_NUM_TASKS")? {
                    Some(n) => Some(n),
                    None => num("SLURM_NTASKS")?,
                },
            ) {
                let local = num("SLURM_LOCALID")?.unwrap_or(0);
                let local_world = var("SLURM_TASKS_PER_NODE")
                    .or_else(|| var("SLURM_NTASKS_PER_NODE"))
                    .and_then(|v| v.split('(').next()?.trim().parse().ok())
                    .unwrap_or(1);
                (Launcher::Slurm, rank, world, local, local_world)
            } else {
                return Ok(None);
            };
        if world <= 1 {
            return Ok(None);
        }
        if rank >= world {
            bail!("rank {rank} is not below the world size {world}");
        }
        let (Some(addr), Some(port)) = (var("MASTER_ADDR"), var("MASTER_PORT")) else {
            bail!(
                "a {world}-process launch needs MASTER_ADDR and MASTER_PORT (torchrun sets them; \
                 under SLURM export them in the job script, see the README's \"Many GPUs\")"
            );
        };
        let master_port = port
            .trim()
            .parse::<u16>()
            .map_err(|_| anyhow::anyhow!("MASTER_PORT={port:?} is not a port number"))?;
        let agent_store = launcher == Launcher::Torchrun
            && var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(Some(Self {
            launcher,
            rank,
            world_size: world,
            local_rank,
            local_world_size: local_world,
            master_addr: addr,
            master_port,
            agent_store,
            restart_count: num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u64,
        }))
    }

    /// The store as `torch.distributed`'s `env://` rendezvous makes it: rank 0 serves it, or,
    /// under torchrun's agent store, every rank is a client of the agent's, under the prefix
    /// of this restart attempt.
    fn store_addr(&self, timeout: Duration) -> StoreAddr {
        StoreAddr {
            host: self.master_addr.clone(),
            port: self.master_port,
            is_server: !self.agent_store && self.rank == 0,
            world_size: self.world_size,
            timeout,
            prefix: Some(format!("/worker/attempt_{}", self.restart_count)),
        }
    }
}

/// A joined process group and its store.
pub struct Distributed {
    launch: Launch,
    store: Store,
    group: ProcessGroup,
    timeout: Duration,
    /// Time spent in the training step's all-reduces (nanoseconds), for the end-of-run line.
    step_comm_nanos: AtomicU64,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("launch", &self.launch)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Where the group's keys live in the store (beside torchrun's own).
const KEY_PREFIX: &str = "ncct2ctpa/";

impl Distributed {
    /// Joins the group of `launch` (returns once every rank joined, or fails after
    /// `timeout`). `timeout` also bounds every collective and barrier: a peer that hangs
    /// longer (rank 0 validating, say) makes the others fail, so it must exceed the longest
    /// validation.
    pub fn connect(launch: Launch, timeout: Duration) -> anyhow::Result<Self> {
        let addr = launch.store_addr(timeout);
        let store = Store::connect(&addr).with_context(|| {
            format!(
                "rank {} of {}: joining the store at {}:{}{}",
                launch.rank,
                launch.world_size,
                addr.host,
                addr.port,
                if addr.is_server { " (served here)" } else { "" }
            )
        })?;
        let interface = std::env::var("GLOO_SOCKET_IFNAME").ok();
        let group = ProcessGroup::gloo(
            &store,
            launch.rank,
            launch.world_size,
            timeout,
            interface.as_deref(),
        )
        .with_context(|| {
            format!(
                "rank {} of {}: creating the Gloo process group",
                launch.rank, launch.world_size
            )
        })?;
        tracing::info!(
            "joined the process group: rank {} of {} ({:?}, local rank {} of {}), backend gloo, \
             store {}:{}",
            launch.rank,
            launch.world_size,
            launch.launcher,
            launch.local_rank,
            launch.local_world_size,
            launch.master_addr,
            launch.master_port
        );
        Ok(Self {
            launch,
            store,
            group,
            timeout,
            step_comm_nanos: AtomicU64::new(0),
        })
    }

    /// The time this rank spent in the training step's all-reduces so far (gradients, terms).
    pub fn step_comm_time(&self) -> Duration {
        Duration::from_nanos(self.step_comm_nanos.load(Ordering::Relaxed))
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        let nanos = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.step_comm_nanos.fetch_add(nanos, Ordering::Relaxed);
        out
    }

    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    pub fn world_size(&self) -> usize {
        self.launch.world_size
    }

    pub fn local_rank(&self) -> usize {
        self.launch.local_rank
    }

    /// Rank 0: the one that writes the run folder.
    pub fn is_leader(&self) -> bool {
        self.launch.rank == 0
    }

    /// "rank 1 of 4 (torchrun, local 1 of 2), backend gloo".
    pub fn describe(&self) -> String {
        format!(
            "rank {} of {} ({}, local {} of {}), backend gloo",
            self.launch.rank,
            self.launch.world_size,
            match self.launch.launcher {
                Launcher::Torchrun => "torchrun",
                Launcher::Slurm => "SLURM",
            },
            self.launch.local_rank,
            self.launch.local_world_size
        )
    }

    /// Overwrites `tensors` with rank 0's (weights and buffers at the start and after a
    /// resume).
    pub fn broadcast_from_leader(&self, tensors: &[Tensor], what: &str) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        self.group
            .broadcast(&refs, 0)
            .map_err(|e| self.failure(&format!("broadcasting {what}"), e))
    }

    /// Replaces the gradient of each of `vars` (those that have one) by its mean over the
    /// ranks, through flat buckets of at most [`BUCKET_BYTES`] all-reduced together.
    pub fn average_gradients(&self, vars: &[Tensor], what: &str) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = vars
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        let buckets = buckets(&grads, BUCKET_BYTES);
        let flats: Vec<Tensor> = buckets
            .iter()
            .map(|b| Tensor::cat(&b.iter().map(|g| g.reshape(-1)).collect::<Vec<_>>(), 0))
            .collect();
        let refs: Vec<&Tensor> = flats.iter().collect();
        self.timed(|| self.group.all_reduce(&refs, ReduceOp::Sum))
            .map_err(|e| self.failure(&format!("averaging the {what} gradients"), e))?;
        let world = self.world_size() as f64;
        for (bucket, flat) in buckets.iter().zip(&flats) {
            let mut flat = flat.shallow_clone();
            let _ = flat.divide_scalar_(world);
            let mut offset = 0;
            for g in bucket {
                let n = g.numel() as i64;
                let mut g = g.shallow_clone();
                g.copy_(&flat.narrow(0, offset, n).view_as(&g));
                offset += n;
            }
        }
        Ok(())
    }

    /// Sums `t` over the ranks, in place.
    pub fn sum_(&self, t: &Tensor, what: &str) -> anyhow::Result<()> {
        self.timed(|| self.group.all_reduce(&[t], ReduceOp::Sum))
            .map_err(|e| self.failure(what, e))
    }

    /// Returns once every rank reached it (`what` names the wait in errors).
    pub fn barrier(&self, what: &str) -> anyhow::Result<()> {
        self.group
            .barrier()
            .map_err(|e| self.failure(&format!("waiting for {what}"), e))
    }

    /// Rank 0's `value` of `key`, on every rank (rank 0 passes `Some`, the others `None`):
    /// the resolved configuration, the checkpoint to resume from.
    pub fn share(&self, key: &str, value: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
        let key = format!("{KEY_PREFIX}{key}");
        if let Some(v) = value {
            self.store
                .set(&key, v)
                .with_context(|| format!("publishing {key} to the other ranks"))?;
            return Ok(v.to_vec());
        }
        self.store.get(&key).with_context(|| {
            format!(
                "rank {}: waiting for rank 0's {key} (timeout {} s)",
                self.rank(),
                self.timeout.as_secs()
            )
        })
    }

    /// The error of a failed collective, naming the ranks that seem lost: every surviving
    /// rank reports its failure in the store, waits a moment for the others', and names those
    /// that did not report (they died or hang). When the store itself is gone, the rank that
    /// served it is.
    pub fn failure(&self, what: &str, e: torchext::TorchExtError) -> anyhow::Error {
        let me = self.rank();
        let world = self.world_size();
        let head = format!("rank {me} of {world}: {what} failed: {e}");
        let report = format!("{KEY_PREFIX}failed/{me}");
        if self.store.set(&report, b"1").is_err() {
            let server = match self.launch.agent_store {
                true => "torchrun's agent".to_owned(),
                false => "rank 0".to_owned(),
            };
            return anyhow::anyhow!(
                "{head}; the store at {}:{} ({server}) is unreachable too: {server} is lost \
                 (died or was killed)",
                self.launch.master_addr,
                self.launch.master_port
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        let lost: Vec<String> = (0..world)
            .filter(|r| *r != me)
            // a store that cannot answer proves nothing about the peer: not counted as lost
            .filter(|r| {
                self.store
                    .contains(&format!("{KEY_PREFIX}failed/{r}"))
                    .is_ok_and(|reported| !reported)
            })
            .map(|r| r.to_string())
            .collect();
        match lost.is_empty() {
            true => anyhow::anyhow!("{head}; every other rank reported the failure too"),
            false => anyhow::anyhow!(
                "{head}; lost peer(s): rank {} (died, was killed, or hangs; collectives time out \
                 after {} s)",
                lost.join(", rank "),
                self.timeout.as_secs()
            ),
        }
    }
}

/// Consecutive runs of `tensors` (same dtype and device) of at most `cap` bytes each (a
/// larger tensor is a bucket of its own).
fn buckets(tensors: &[Tensor], cap: usize) -> Vec<Vec<Tensor>> {
    let mut out: Vec<Vec<Tensor>> = Vec::new();
    let mut bytes = 0usize;
    for t in tensors {
        let size = t.numel() * elem_bytes(t.kind());
        let fits = out.last().is_some_and(|b| {
            let first = &b[0];
            first.kind() == t.kind() && first.device() == t.device() && bytes + size <= cap
        });
        if fits {
            bytes += size;
            if let Some(b) = out.last_mut() {
                b.push(t.shallow_clone());
            }
        } else {
            bytes = size;
            out.push(vec![t.shallow_clone()]);
        }
    }
    out
}

fn elem_bytes(kind: Kind) -> usize {
    match kind {
        Kind::Double | Kind::Int64 => 8,
        Kind::Half | Kind::BFloat16 | Kind::Int16 => 2,
        Kind::Int8 | Kind::Uint8 | Kind::Bool => 1,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> anyhow::Result<Option<Launch>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn no_launcher_or_a_world_of_one_is_a_single_process() {
        assert_eq!(launch(&[]).unwrap(), None);
        let one = [("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")];
        assert_eq!(launch(&one).unwrap(), None);
        let slurm_one = [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")];
        assert_eq!(launch(&slurm_one).unwrap(), None);
    }

    #[test]
    fn torchrun_environment_with_the_agent_store() {
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Torchrun);
        assert_eq!(
            (l.rank, l.world_size, l.local_rank, l.local_world_size),
            (3, 8, 1, 2)
        );
        let addr = l.store_addr(Duration::from_secs(5));
        assert!(!addr.is_server, "the agent serves the store");
        assert_eq!(addr.prefix.as_deref(), Some("/worker/attempt_2"));
        assert_eq!((addr.host.as_str(), addr.port), ("node7", 29500));
    }

    #[test]
    fn without_the_agent_store_rank_0_serves_it() {
        let vars = |rank| {
            launch(&[
                ("RANK", rank),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "1234"),
            ])
            .unwrap()
            .unwrap()
        };
        assert!(vars("0").store_addr(Duration::ZERO).is_server);
        assert!(!vars("1").store_addr(Duration::ZERO).is_server);
    }

    #[test]
    fn slurm_environment() {
        let l = launch(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "4(x2)"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29400"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Slurm);
        assert_eq!(
            (l.rank, l.world_size, l.local_rank, l.local_world_size),
            (5, 8, 1, 4)
        );
        assert!(!l.agent_store);
    }

    /// In the batch script itself SLURM_NTASKS is the allocation's, but one process runs: the
    /// step's own task count decides.
    #[test]
    fn the_slurm_batch_script_is_one_process() {
        let batch = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NUM_TASKS", "1"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29400"),
        ];
        assert_eq!(launch(&batch).unwrap(), None);
    }

    #[test]
    fn incomplete_or_bad_environments_are_clear_errors() {
        let e = launch(&[("RANK", "0"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR and MASTER_PORT"), "{e}");
        let e = launch(&[("RANK", "0")]).unwrap_err();
        assert!(e.to_string().contains("RANK and WORLD_SIZE"), "{e}");
        let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("RANK=\"x\""), "{e}");
        let e = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("not below"), "{e}");
        let bad_port = [
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "99999"),
        ];
        assert!(launch(&bad_port)
            .unwrap_err()
            .to_string()
            .contains("MASTER_PORT"));
    }

    #[test]
    fn buckets_respect_the_cap_dtype_and_order() {
        let f = |n: i64, k: Kind| Tensor::zeros([n], (k, tch::Device::Cpu));
        let ts = vec![
            f(10, Kind::Float),
            f(10, Kind::Float),
            f(30, Kind::Float),
            f(5, Kind::Double),
            f(1, Kind::Double),
        ];
        // cap 100 bytes: [40 + 40], [120 alone], [40 + 8]
        let b = buckets(&ts, 100);
        let sizes: Vec<Vec<i64>> = b
            .iter()
            .map(|b| b.iter().map(|t| t.numel() as i64).collect())
            .collect();
        assert_eq!(sizes, vec![vec![10, 10], vec![30], vec![5, 1]]);
    }
}
