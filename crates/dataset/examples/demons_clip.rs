//! How well the classical deformable registration (`volume::register::demons`) undoes the
//! phantom's motion, per HU clip range: the CTPA of each phantom case, moved by up to MM mm,
//! warped onto the NCCT, scored against the phantom's aligned CTPA in the body, the lungs and
//! the arteries (MAE and mean HU), beside the rigidly unregistered CTPA.
//!
//! `cargo run --release -p dataset --example demons_clip -- [CASES] [MM] [HIGH...]`
//! (defaults: 3 cases, 10 mm, clip upper bounds 100 40 0; the lower bound is -1024 HU).

use dataset::phantom::{generate_case, PhantomConfig};
use ndarray::{Array3, Zip};
use volume::register::demons::{register_demons, DemonsConfig};

fn scores(img: &Array3<f32>, truth: &Array3<f32>, mask: &Array3<u8>) -> (f64, f64) {
    let (mut err, mut sum, mut n) = (0.0f64, 0.0f64, 0usize);
    Zip::from(img).and(truth).and(mask).for_each(|&p, &t, &m| {
        if m != 0 {
            err += f64::from((p - t).abs());
            sum += f64::from(p);
            n += 1;
        }
    });
    (err / n.max(1) as f64, sum / n.max(1) as f64)
}

/// The argument at `i` parsed as a `T`, or `default` when absent.
fn arg<T: std::str::FromStr>(
    args: &[String],
    i: usize,
    what: &str,
    default: T,
) -> Result<T, String> {
    args.get(i).map_or(Ok(default), |a| {
        a.parse()
            .map_err(|_| format!("{what}: expected a number, got {a:?}"))
    })
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cases: usize = arg(&args, 0, "CASES", 3)?;
    let mm: f64 = arg(&args, 1, "MM", 10.0)?;
    let highs: Vec<f32> = if args.len() > 2 {
        (2..args.len())
            .map(|i| arg(&args, i, "HIGH", 0.0))
            .collect::<Result<_, _>>()?
    } else {
        vec![100.0, 40.0, 0.0]
    };
    if cases == 0 {
        return Err("CASES: at least 1".into());
    }
    let cfg = PhantomConfig {
        seed: 16,
        misalignment_mm: mm,
        ..PhantomConfig::default()
    };
    println!("clip high | body MAE | lung MAE | artery MAE | artery mean HU (truth) | s");
    let mut rows: Vec<(String, [f64; 5], f64)> = Vec::new();
    for i in 0..cases {
        let case = generate_case(&cfg, i).map_err(|e| format!("phantom case {i}: {e}"))?;
        let truth = &case.ctpa_aligned.data;
        let row = |img: &Array3<f32>| {
            let (b, _) = scores(img, truth, &case.body.data);
            let (l, _) = scores(img, truth, &case.lung.data);
            let (a, mean) = scores(img, truth, &case.arteries.data);
            let (_, tmean) = scores(truth, truth, &case.arteries.data);
            [b, l, a, mean, tmean]
        };
        let mut add =
            |name: String, v: [f64; 5], s: f64| match rows.iter_mut().find(|r| r.0 == name) {
                Some(r) => {
                    for (a, b) in r.1.iter_mut().zip(v) {
                        *a += b / cases as f64;
                    }
                    r.2 += s / cases as f64;
                }
                None => rows.push((name, v.map(|x| x / cases as f64), s / cases as f64)),
            };
        add("moved".into(), row(&case.ctpa.data), 0.0);
        for &h in &highs {
            let mut dc = DemonsConfig::for_spacing(case.ncct.geometry.spacing);
            dc.clip_hu = [-1024.0, h];
            let t = std::time::Instant::now();
            let r = register_demons(&case.ncct, &case.ctpa, &dc)
                .map_err(|e| format!("case {i}, clip high {h}: {e}"))?;
            add(
                format!("{h}"),
                row(&r.warped.data),
                t.elapsed().as_secs_f64(),
            );
        }
    }
    for (name, v, s) in rows {
        println!(
            "{name:>9} | {:8.1} | {:8.1} | {:10.1} | {:8.1} ({:.1}) | {s:.1}",
            v[0], v[1], v[2], v[3], v[4]
        );
    }
    Ok(())
}
