//! Test fixtures (feature `fixtures`, for the tests of the crates above; never in a user's
//! build): a tiny hand-drawn paired dataset that prepares in milliseconds, so that tests of
//! training, inference and the command line run in seconds. The benchmark and the demo use
//! the real phantom ([`crate::phantom`]).

use crate::manifest::AlignMode;
use crate::prepare::{prepare, PrepareOptions, SplitChoice};
use anyhow::Context;
use ndarray::Array3;
use std::path::{Path, PathBuf};
use volume::io::nifti::{write_nifti, write_nifti_mask};
use volume::{Geometry, Volume};

/// A tiny synthetic paired dataset for tests and smoke checks, written as raw NIfTI pairs
/// under `root/raw` and prepared into `root/prepared` (returned).
///
/// Each case is `[z, y, x]` = `[6, 32, 40]` at 2.5 x 2.5 x 5 mm: air, an elliptic body (40 HU),
/// two lungs (-850 HU) with a few vessels (40 HU on NCCT, 40 + 350 HU on CTPA: the contrast the
/// network must learn to add), and a spine (700 HU); the lung masks are written too. Cases differ by a seeded shift of the
/// vessels, so they are not identical. `cases` must be at least 2: the last case is the
/// validation split, the others train.
pub fn synthetic_dataset(root: &Path, cases: usize) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        cases >= 2,
        "a synthetic dataset needs at least 2 cases (train + val)"
    );
    let raw = root.join("raw");
    for sub in ["ncct", "ctpa", "lung"] {
        std::fs::create_dir_all(raw.join(sub))
            .with_context(|| format!("creating {}", raw.display()))?;
    }
    let in_lung = |y: usize, x: usize| {
        [10.0f32, 29.0].iter().any(|&cx| {
            let (ly, lx) = ((y as f32 - 14.0) / 9.0, (x as f32 - cx) / 7.0);
            ly * ly + lx * lx < 1.0
        })
    };
    let chest = |contrast: f32, shift: usize| -> anyhow::Result<Volume> {
        let data = Array3::from_shape_fn((6, 32, 40), |(_z, y, x)| {
            let (fy, fx) = ((y as f32 - 15.5) / 14.0, (x as f32 - 19.5) / 19.0);
            let vessel = (x + shift).is_multiple_of(5) && (y + shift) % 4 < 2;
            if fy * fy + fx * fx >= 1.0 {
                -1000.0
            } else if in_lung(y, x) && vessel {
                40.0 + contrast
            } else if in_lung(y, x) {
                -850.0
            } else if (25..28).contains(&y) && (18..22).contains(&x) {
                700.0
            } else {
                40.0
            }
        });
        Ok(Volume::new(data, Geometry::identity([2.5, 2.5, 5.0]))?)
    };
    let mut split = serde_json::Map::new();
    for i in 0..cases {
        let name = format!("case{i:02}");
        write_nifti(&raw.join(format!("ncct/{name}.nii.gz")), &chest(0.0, i)?)?;
        write_nifti(&raw.join(format!("ctpa/{name}.nii.gz")), &chest(350.0, i)?)?;
        // The lung mask is given (the layout allows it), so the fixture does not depend on
        // the classical segmentation's behaviour on a 32 x 40 toy.
        let lung = Array3::from_shape_fn((6, 32, 40), |(_z, y, x)| u8::from(in_lung(y, x)));
        write_nifti_mask(
            &raw.join(format!("lung/{name}.nii.gz")),
            &Volume::new(lung, Geometry::identity([2.5, 2.5, 5.0]))?,
        )?;
        let s = if i + 1 == cases { "val" } else { "train" };
        split.insert(name, serde_json::Value::from(s));
    }
    let split_file = root.join("split.json");
    std::fs::write(&split_file, serde_json::to_vec(&split)?)?;
    let discovery = crate::raw::discover(&raw)?;
    let mut opts = PrepareOptions {
        split: SplitChoice::File(split_file),
        jobs: 1,
        ..PrepareOptions::default()
    };
    opts.settings.align = AlignMode::None;
    let prepared = root.join("prepared");
    prepare(&discovery, &prepared, &opts, &|_| {})?;
    Ok(prepared)
}
