//! Prepare throughput and random slice read throughput of the prepared store.
//!
//! ```text
//! cargo run --release -p dataset --example store_bench -- [CASES] [small|full] [READS]
//! cargo run --release -p dataset --example store_bench -- --open PREPARED_DIR [READS]
//! ```
//!
//! Without `--open`: writes CASES phantom pairs (default 4, small) to a temporary folder,
//! prepares them (rigid alignment on, all cores) and reports seconds per case; then, on that
//! store (or on PREPARED_DIR), reads READS (default 20000) slices at random case and z and
//! reports slices/s for the zero-copy views and for the normalised `f32` copies the trainer
//! uses. Reads hit the page cache (the store was just written, or is read once to warm it),
//! which is the steady state of training over epochs.

use dataset::manifest::Split;
use dataset::phantom::{write_dataset, PhantomConfig, PhantomSize, WriteOptions};
use dataset::prepare::{prepare, CaseStatus, PrepareOptions};
use dataset::raw::discover;
use dataset::store::PreparedDataset;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn bench_reads(root: &Path, reads: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ds = PreparedDataset::open(root)?;
    let cases: Vec<(usize, usize)> = ds
        .manifest()
        .cases
        .iter()
        .map(|c| (ds.case_index(c.name()).unwrap_or(0), c.meta.slices()))
        .collect();
    let shape = ds.manifest().cases[0].meta.grid.shape_zyx;
    println!(
        "store: {} cases ({} train), slices of {} x {} (first case)",
        cases.len(),
        ds.cases(Split::Train).len(),
        shape[1],
        shape[2]
    );
    // Warm the page cache once.
    for &(i, nz) in &cases {
        for z in 0..nz {
            std::hint::black_box(ds.slice_at(i, z)?.ncct[[0, 0]]);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let picks: Vec<(usize, usize)> = (0..reads)
        .map(|_| {
            let (i, nz) = cases[rng.gen_range(0..cases.len())];
            (i, rng.gen_range(0..nz))
        })
        .collect();

    let t = Instant::now();
    let mut acc = 0i64;
    for &(i, z) in &picks {
        let s = ds.slice_at(i, z)?;
        // Touch every value, as any consumer of the slice would.
        acc += s.ncct.iter().map(|&v| v as i64).sum::<i64>()
            + s.ctpa.iter().map(|&v| v as i64).sum::<i64>()
            + s.lung.iter().map(|&v| v as i64).sum::<i64>();
    }
    let views = reads as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(acc);

    let t = Instant::now();
    let mut accf = 0f32;
    for &(i, z) in &picks {
        let s = ds.slice_at(i, z)?.normalized();
        accf += s.ncct[[0, 0]] + s.ctpa[[1, 1]] + s.body[[2, 2]] + s.lung[[3, 3]];
    }
    let owned = reads as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(accf);

    println!("random slice reads, one thread: {views:.0} slices/s (i16/u8 views, all 4 arrays summed), {owned:.0} slices/s (normalised f32 copies of all 4 arrays)");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--open") {
        let root = PathBuf::from(args.get(1).ok_or("--open needs a folder")?);
        let reads = args
            .get(2)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(20_000);
        return bench_reads(&root, reads);
    }
    let cases: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(4);
    let size = match args.get(1).map(String::as_str) {
        None | Some("small") => PhantomSize::Small,
        Some("full") => PhantomSize::Full,
        Some(other) => return Err(format!("size must be small or full, got {other}").into()),
    };
    let reads: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);

    let tmp = tempfile::tempdir()?;
    let raw = tmp.path().join("raw");
    let out = tmp.path().join("prepared");
    let cfg = PhantomConfig {
        size,
        ..PhantomConfig::default()
    };
    let t = Instant::now();
    write_dataset(
        &raw,
        &cfg,
        &WriteOptions {
            cases,
            overwrite: false,
            preview: false,
        },
        &|_| {},
    )?;
    println!(
        "phantom: {cases} {size:?} pairs generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let discovery = discover(&raw)?;
    let opts = PrepareOptions::default();
    let report = prepare(&discovery, &out, &opts, &|_| {})?;
    let secs = report.elapsed.as_secs_f64();
    let per_case: Vec<f64> = report
        .cases
        .iter()
        .filter(|c| matches!(c.status, CaseStatus::Prepared(_)))
        .map(|c| c.seconds)
        .collect();
    let mean = per_case.iter().sum::<f64>() / per_case.len().max(1) as f64;
    println!(
        "prepare (rigid alignment, {} threads): {cases} cases in {secs:.2} s = {:.2} cases/s wall; {mean:.2} s per case (one case's own time)",
        rayon::current_num_threads(),
        cases as f64 / secs
    );
    let again = prepare(&discovery, &out, &opts, &|_| {})?;
    println!(
        "rerun with nothing to do: {:.2} s (checksums only)",
        again.elapsed.as_secs_f64()
    );
    bench_reads(&out, reads)
}
