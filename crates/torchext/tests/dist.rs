//! c10d through the shim, across real processes on 127.0.0.1: the test re-runs its own binary
//! as the ranks (`worker` below does nothing unless `TORCHEXT_DIST_TEST` says which role to
//! play), so the store, the Gloo transport and the failure detection are exercised exactly as
//! training uses them.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};
use torchext::dist::{ProcessGroup, ReduceOp, Store, StoreAddr};

const ROLE: &str = "TORCHEXT_DIST_TEST";

/// A free port below Linux's ephemeral range (32768-60999), so that no socket the ranks open
/// (Gloo's pairs bind ephemeral ports) can take it between this check and the store's bind.
/// Each call starts its search elsewhere (tests of one binary run in parallel).
fn free_port() -> u16 {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = (std::process::id().wrapping_mul(7919) + call * 613) % 12_000;
    (0..12_000u32)
        .map(|i| (20_000 + (start + i * 7) % 12_000) as u16)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port in 20000..32000")
}

fn spawn(test: &str, role: &str, rank: usize, world: usize, port: u16) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a rank")
}

fn env_usize(key: &str) -> usize {
    std::env::var(key).expect(key).parse().expect(key)
}

/// This process's rank, world size, store and group (when it is a worker).
fn join(timeout: Duration) -> (usize, usize, Store, ProcessGroup) {
    let (rank, world) = (env_usize("RANK"), env_usize("WORLD_SIZE"));
    let store = Store::connect(&StoreAddr {
        host: "127.0.0.1".into(),
        port: env_usize("MASTER_PORT") as u16,
        is_server: rank == 0,
        world_size: world,
        timeout: Duration::from_secs(60),
        prefix: Some("/worker/attempt_0".into()),
    })
    .expect("store");
    let group = ProcessGroup::gloo(&store, rank, world, timeout, Some("lo")).expect("gloo");
    (rank, world, store, group)
}

/// The worker side of both tests (a no-op when run as a normal test).
#[test]
fn worker() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "collectives" => collectives_worker(),
        "dies" => dies_worker(),
        other => panic!("unknown role {other}"),
    }
}

fn collectives_worker() {
    let (rank, world, store, group) = join(Duration::from_secs(30));
    assert_eq!((group.rank(), group.size()), (rank, world));
    // all-reduce sum and max over two tensors at once (each its own collective)
    let a = Tensor::full([5], (rank + 1) as f64, (Kind::Float, tch::Device::Cpu));
    let b = Tensor::arange(4, (Kind::Double, tch::Device::Cpu)) * (rank as f64);
    group.all_reduce(&[&a, &b], ReduceOp::Sum).expect("sum");
    let want_a = (1..=world).sum::<usize>() as f64;
    assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![want_a as f32; 5]);
    let ranks_sum = (0..world).sum::<usize>() as f64;
    assert_eq!(
        Vec::<f64>::try_from(&b).unwrap(),
        vec![0.0, ranks_sum, 2.0 * ranks_sum, 3.0 * ranks_sum]
    );
    let m = Tensor::from_slice(&[rank as f32, -(rank as f32)]);
    group.all_reduce(&[&m], ReduceOp::Max).expect("max");
    assert_eq!(
        Vec::<f32>::try_from(&m).unwrap(),
        vec![(world - 1) as f32, 0.0]
    );
    // broadcast from rank 1
    let c = Tensor::full([3], rank as f64 * 10.0, (Kind::Float, tch::Device::Cpu));
    group.broadcast(&[&c], 1).expect("broadcast");
    assert_eq!(Vec::<f32>::try_from(&c).unwrap(), vec![10.0; 3]);
    // the store: every rank reads every other rank's key
    store
        .set(&format!("hello/{rank}"), format!("rank {rank}").as_bytes())
        .unwrap();
    for r in 0..world {
        let v = store.get(&format!("hello/{r}")).unwrap();
        assert_eq!(String::from_utf8(v).unwrap(), format!("rank {r}"));
    }
    assert!(store.add("count", 1).unwrap() >= 1);
    group.barrier().expect("barrier");
    assert_eq!(store.add("count", 0).unwrap(), world as i64);
    assert!(!store.contains("never/set").unwrap());
    println!("RANK {rank} OK");
}

fn dies_worker() {
    let (rank, _, _store, group) = join(Duration::from_secs(20));
    group.barrier().expect("first barrier");
    if rank == 1 {
        // dies without a word, as a killed process does
        std::process::exit(9);
    }
    let t0 = Instant::now();
    let x = Tensor::ones([1000], (Kind::Float, tch::Device::Cpu));
    let err = group
        .all_reduce(&[&x], ReduceOp::Sum)
        .expect_err("the all-reduce must fail once the peer is gone");
    println!("FAILED after {:.1} s: {err}", t0.elapsed().as_secs_f64());
}

/// Kills the processes `pids` after `after` unless the returned flag is set first: a rank
/// that hangs fails its test (killed: no exit code) instead of hanging the test run.
fn watchdog(
    pids: Vec<u32>,
    after: std::time::Duration,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&done);
    std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < after {
            if flag.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for pid in pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    done
}

fn finish(children: Vec<Child>) -> Vec<(i32, String)> {
    let pids = children.iter().map(Child::id).collect();
    let done = watchdog(pids, Duration::from_secs(120));
    let results = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.code().unwrap_or(-1), text)
        })
        .collect();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    results
}

#[test]
fn three_ranks_run_gloo_collectives_and_share_a_store() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let port = free_port();
    let kids = (0..3)
        .map(|r| spawn("worker", "collectives", r, 3, port))
        .collect();
    for (rank, (code, text)) in finish(kids).into_iter().enumerate() {
        assert_eq!(code, 0, "rank {rank} failed:\n{text}");
        assert!(
            text.contains(&format!("RANK {rank} OK")),
            "rank {rank}:\n{text}"
        );
    }
}

#[test]
fn a_dead_peer_is_an_error_on_the_others_not_a_hang() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let port = free_port();
    let t0 = Instant::now();
    let kids = (0..2)
        .map(|r| spawn("worker", "dies", r, 2, port))
        .collect();
    let results = finish(kids);
    let (code0, text0) = &results[0];
    assert_eq!(*code0, 0, "rank 0:\n{text0}");
    assert!(
        text0.contains("FAILED after"),
        "rank 0 did not fail:\n{text0}"
    );
    assert_eq!(results[1].0, 9);
    // well within the 20 s collective timeout: a closed connection is noticed at once
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
}
