//! Patient-level train/validation/test splits.
//!
//! The unit of splitting is the case (one patient's NCCT/CTPA pair), never the slice: slices of
//! one patient are strongly correlated, and a patient seen in training would make validation
//! and test figures meaningless. A case therefore has exactly one [`Split`].
//!
//! Two ways to split:
//! - [`seeded_split`]: case names sorted, shuffled with ChaCha8 from a seed, then cut by
//!   fractions. The result depends only on the set of names, the seed and the fractions (not on
//!   file-system order), so it is reproducible on any machine.
//! - [`read_split_file`]: the user's own assignment (a JSON file), for fixed benchmark splits.
//!   `prepare` also writes the split it used as `split.json` in this format, so a split can be
//!   pinned before more cases are added (a seeded split of a grown dataset reshuffles).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Which part of the dataset a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment flags work in report tables.
        f.pad(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        })
    }
}

/// Problems with split fractions or a split file. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("split fractions must be three finite non-negative numbers summing to 1 (train,val,test), got {0:?}")]
    BadFractions([f64; 3]),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a split file ({message}); expected {{\"CASE\": \"train\"|\"val\"|\"test\", ...}} or {{\"train\": [CASE, ...], \"val\": [...], \"test\": [...]}}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: case {case} is listed in both {first} and {second}")]
    Duplicate {
        path: PathBuf,
        case: String,
        first: Split,
        second: Split,
    },
    #[error("{path}: no split given for case(s) {}", cases.join(", "))]
    Missing { path: PathBuf, cases: Vec<String> },
}

/// Train/val/test fractions, validated to sum to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitFractions(pub [f64; 3]);

impl Default for SplitFractions {
    /// 70 / 15 / 15, the common choice for datasets of tens to hundreds of patients.
    fn default() -> Self {
        Self([0.7, 0.15, 0.15])
    }
}

impl SplitFractions {
    pub fn new(f: [f64; 3]) -> Result<Self, SplitError> {
        let sum: f64 = f.iter().sum();
        if f.iter().any(|x| !x.is_finite() || *x < 0.0) || (sum - 1.0).abs() > 1e-6 {
            return Err(SplitError::BadFractions(f));
        }
        Ok(Self(f))
    }

    /// Number of cases per split for `n` cases: largest-remainder rounding, then every split
    /// with a non-zero fraction gets at least one case when `n` allows it (a validation split
    /// of zero cases would silently disable validation on small datasets).
    pub fn counts(&self, n: usize) -> [usize; 3] {
        let exact: Vec<f64> = self.0.iter().map(|f| f * n as f64).collect();
        let mut counts: [usize; 3] = [0; 3];
        for (c, e) in counts.iter_mut().zip(&exact) {
            *c = e.floor() as usize;
        }
        let mut order: Vec<usize> = (0..3).collect();
        // Largest remainder first; ties go to the earlier split (train, then val).
        order.sort_by(|&a, &b| {
            let ra = exact[a] - exact[a].floor();
            let rb = exact[b] - exact[b].floor();
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let mut left = n.saturating_sub(counts.iter().sum());
        for &i in order.iter().cycle().take(3 * 3) {
            if left == 0 {
                break;
            }
            if self.0[i] > 0.0 {
                counts[i] += 1;
                left -= 1;
            }
        }
        let wanted = self.0.iter().filter(|f| **f > 0.0).count();
        if n >= wanted {
            for i in 0..3 {
                if self.0[i] > 0.0 && counts[i] == 0 {
                    // Take one from the largest split.
                    let donor = (0..3).max_by_key(|&j| (counts[j], 3 - j)).unwrap_or(0);
                    if counts[donor] > 1 {
                        counts[donor] -= 1;
                        counts[i] += 1;
                    }
                }
            }
        }
        counts
    }
}

/// Splits `cases` (any order; duplicates ignored) by `fractions` with a seeded shuffle.
pub fn seeded_split(
    cases: &[String],
    seed: u64,
    fractions: SplitFractions,
) -> BTreeMap<String, Split> {
    let mut names: Vec<&String> = cases.iter().collect();
    names.sort();
    names.dedup();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    names.shuffle(&mut rng);
    let [n_train, n_val, _] = fractions.counts(names.len());
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let split = if i < n_train {
                Split::Train
            } else if i < n_train + n_val {
                Split::Val
            } else {
                Split::Test
            };
            (name.clone(), split)
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SplitFile {
    ByCase(BTreeMap<String, Split>),
    BySplit(BTreeMap<Split, Vec<String>>),
}

/// Reads a split file: either `{"CASE": "train", ...}` or `{"train": ["CASE", ...], ...}`.
/// A case listed twice is an error (a patient in two splits is the leak splits exist to
/// prevent).
pub fn read_split_file(path: &Path) -> Result<BTreeMap<String, Split>, SplitError> {
    let text = std::fs::read_to_string(path).map_err(|source| SplitError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed: SplitFile = serde_json::from_str(&text).map_err(|e| SplitError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    match parsed {
        SplitFile::ByCase(map) => Ok(map),
        SplitFile::BySplit(lists) => {
            let mut map = BTreeMap::new();
            for (split, cases) in lists {
                for case in cases {
                    if let Some(first) = map.insert(case.clone(), split) {
                        return Err(SplitError::Duplicate {
                            path: path.to_path_buf(),
                            case,
                            first,
                            second: split,
                        });
                    }
                }
            }
            Ok(map)
        }
    }
}

/// Restricts a split file's assignment to `cases`; every case must be assigned.
pub fn apply_split_file(
    path: &Path,
    assignment: &BTreeMap<String, Split>,
    cases: &[String],
) -> Result<BTreeMap<String, Split>, SplitError> {
    let missing: Vec<String> = cases
        .iter()
        .filter(|c| !assignment.contains_key(*c))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(SplitError::Missing {
            path: path.to_path_buf(),
            cases: missing,
        });
    }
    Ok(cases
        .iter()
        .filter_map(|c| assignment.get(c).map(|s| (c.clone(), *s)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_to_n_and_fill_every_nonzero_split() {
        let f = SplitFractions::default();
        for n in 0..40 {
            let c = f.counts(n);
            assert_eq!(c.iter().sum::<usize>(), n, "n = {n}: {c:?}");
            if n >= 3 {
                assert!(c.iter().all(|&k| k >= 1), "n = {n}: {c:?}");
            }
        }
        assert_eq!(f.counts(20), [14, 3, 3]);
        assert_eq!(f.counts(4), [2, 1, 1]);
        assert_eq!(
            SplitFractions::new([1.0, 0.0, 0.0]).unwrap().counts(5),
            [5, 0, 0]
        );
    }

    #[test]
    fn bad_fractions_are_rejected() {
        assert!(SplitFractions::new([0.5, 0.5, 0.5]).is_err());
        assert!(SplitFractions::new([1.2, -0.2, 0.0]).is_err());
        assert!(SplitFractions::new([f64::NAN, 0.5, 0.5]).is_err());
    }
}
