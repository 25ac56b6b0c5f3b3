//! Which series of a folder to read. A CTPA export folder typically holds a scout (localizer),
//! a bolus-tracking series (many images at one table position) and several reconstructions
//! (soft-tissue and lung kernels, thin and thick slices); across hundreds of cases the choice
//! has to follow a rule, and say per case what it chose and why.
//!
//! Never chosen among several: localizers (every image's ImageType says LOCALIZER) and
//! series whose images sit at one table position (bolus tracking, a single slice); a folder
//! holding one series is read as it is. Other
//! modalities are passed over when the folder holds CT. A [`SeriesRule`] narrows the rest by
//! SeriesDescription or ConvolutionKernel (regular expressions, case-insensitive) and slice
//! thickness; among what is left, the series with the most slice positions wins (then the
//! thinner slices, then the lower UID, so the choice never depends on file order).

use super::scan::SliceHeader;
use crate::{Result, VolumeError};
use regex::RegexBuilder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// What the chosen series must be (every field optional; the default takes any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeriesRule {
    /// SeriesDescription matches this regular expression (case-insensitive), e.g.
    /// `"ctpa|angio|pulm"`.
    pub description: Option<String>,
    /// ConvolutionKernel matches this regular expression (case-insensitive), e.g. `"b3|std"`.
    pub kernel: Option<String>,
    /// SliceThickness within `[min, max]` mm.
    pub thickness_mm: Option<[f64; 2]>,
}

impl SeriesRule {
    /// Whether the rule takes anything (no condition).
    pub fn is_any(&self) -> bool {
        self == &Self::default()
    }

    /// Checks the expressions and the range, naming the bad one.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (what, re) in [("description", &self.description), ("kernel", &self.kernel)] {
            if let Some(re) = re {
                RegexBuilder::new(re)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| format!("series {what} pattern {re:?}: {e}"))?;
            }
        }
        if let Some([lo, hi]) = self.thickness_mm {
            if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi) {
                return Err(format!(
                    "series thickness range {lo}..{hi} mm is not a range"
                ));
            }
        }
        Ok(())
    }

    /// `None` when `s` satisfies the rule, else why not.
    fn refuses(&self, s: &SeriesFacts) -> Option<String> {
        let matches = |re: &str, text: &str| {
            RegexBuilder::new(re)
                .case_insensitive(true)
                .build()
                .is_ok_and(|r| r.is_match(text))
        };
        if let Some(re) = &self.description {
            if !matches(re, &s.description) {
                return Some(format!(
                    "description {:?} does not match /{re}/",
                    s.description
                ));
            }
        }
        if let Some(re) = &self.kernel {
            let k = s.kernel.as_deref().unwrap_or("");
            if !matches(re, k) {
                return Some(format!("kernel {k:?} does not match /{re}/"));
            }
        }
        if let Some([lo, hi]) = self.thickness_mm {
            match s.thickness_mm {
                Some(t) if (lo..=hi).contains(&t) => {}
                Some(t) => return Some(format!("slice thickness {t} mm is outside {lo}..{hi} mm")),
                None => return Some("no SliceThickness".into()),
            }
        }
        None
    }

    /// The rule in words, for logs and reasons.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(re) = &self.description {
            parts.push(format!("description /{re}/"));
        }
        if let Some(re) = &self.kernel {
            parts.push(format!("kernel /{re}/"));
        }
        if let Some([lo, hi]) = self.thickness_mm {
            parts.push(format!("thickness {lo}..{hi} mm"));
        }
        match parts.is_empty() {
            true => "any series".into(),
            false => parts.join(", "),
        }
    }
}

/// What the choice looks at in one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesFacts {
    pub uid: String,
    pub modality: String,
    pub description: String,
    pub kernel: Option<String>,
    /// Images (frames included).
    pub images: usize,
    /// Distinct table positions of its non-localizer images (along the slice normal, to
    /// 0.01 mm): the slices a volume would have.
    pub positions: usize,
    /// The median SliceThickness (mm).
    pub thickness_mm: Option<f64>,
    /// Distance between the first and the last position (mm).
    pub extent_mm: f64,
    /// Every image is a localizer (scout).
    pub localizer: bool,
}

impl SeriesFacts {
    pub fn of(uid: &str, headers: &[SliceHeader]) -> Self {
        let first = headers.first();
        let images: Vec<&SliceHeader> = headers
            .iter()
            .filter(|h| !h.image_type.iter().any(|t| t == "LOCALIZER"))
            .collect();
        let normal = images
            .first()
            .and_then(|h| h.orientation)
            .map(|o| {
                [
                    o[1] * o[5] - o[2] * o[4],
                    o[2] * o[3] - o[0] * o[5],
                    o[0] * o[4] - o[1] * o[3],
                ]
            })
            .unwrap_or([0.0, 0.0, 1.0]);
        let along: Vec<f64> = images
            .iter()
            .filter_map(|h| h.position)
            .map(|p| p[0] * normal[0] + p[1] * normal[1] + p[2] * normal[2])
            .collect();
        let positions: BTreeSet<i64> = along.iter().map(|d| (d * 100.0).round() as i64).collect();
        let extent = match (
            along.iter().copied().reduce(f64::min),
            along.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) => hi - lo,
            _ => 0.0,
        };
        let mut thickness: Vec<f64> = images.iter().filter_map(|h| h.slice_thickness).collect();
        thickness.sort_by(f64::total_cmp);
        Self {
            uid: uid.to_owned(),
            modality: first.map(|h| h.modality.clone()).unwrap_or_default(),
            description: first.map(|h| h.description.clone()).unwrap_or_default(),
            kernel: images.iter().find_map(|h| h.kernel.clone()),
            images: headers.len(),
            positions: positions.len(),
            thickness_mm: thickness.get(thickness.len() / 2).copied(),
            extent_mm: extent,
            localizer: images.is_empty() && !headers.is_empty(),
        }
    }

    /// "CT 312 slices 1 mm B30f 311 mm \"CTPA 1.0 B30f\"".
    pub fn line(&self) -> String {
        format!(
            "{} {} slices {} {} {:.0} mm \"{}\"",
            self.modality,
            self.positions,
            self.thickness_mm
                .map_or("? mm".to_owned(), |t| format!("{t} mm")),
            self.kernel.as_deref().unwrap_or("-"),
            self.extent_mm,
            self.description
        )
    }
}

/// The chosen series, why, and why each other one was not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesChoice {
    pub uid: String,
    pub description: String,
    pub reason: String,
    /// `(uid, why not)` of every other series.
    pub passed_over: Vec<(String, String)>,
}

/// Chooses among the series of `dir` by `rule` (see the module docs); an error lists every
/// series and why it was not taken.
pub fn choose(dir: &Path, series: &[SeriesFacts], rule: &SeriesRule) -> Result<SeriesChoice> {
    rule.validate()
        .map_err(|e| VolumeError::invalid(format!("{}: {e}", dir.display())))?;
    let any_ct = series.iter().any(|s| s.modality == "CT" && !s.localizer);
    // a folder of one series is read as it is (a single slice, or an error from the
    // assembler for what cannot be a volume)
    let several = series.len() > 1;
    let mut eligible = Vec::new();
    let mut passed_over = Vec::new();
    for s in series {
        let why = if several && s.localizer {
            Some("localizer (scout)".to_owned())
        } else if several && s.positions < 2 {
            Some(format!(
                "{} image(s) at a single table position (bolus tracking or a single slice)",
                s.images
            ))
        } else if any_ct && s.modality != "CT" {
            Some(format!("modality {} (the folder holds CT)", s.modality))
        } else {
            rule.refuses(s)
        };
        match why {
            Some(w) => passed_over.push((s.uid.clone(), w)),
            None => eligible.push(s),
        }
    }
    let n = eligible.len();
    eligible.sort_by(|a, b| {
        b.positions
            .cmp(&a.positions)
            .then(
                a.thickness_mm
                    .unwrap_or(f64::MAX)
                    .total_cmp(&b.thickness_mm.unwrap_or(f64::MAX)),
            )
            .then(b.images.cmp(&a.images))
            .then(a.uid.cmp(&b.uid))
    });
    let Some(best) = eligible.first() else {
        let list: Vec<String> = passed_over
            .iter()
            .map(|(uid, why)| format!("{uid}: {why}"))
            .collect();
        return Err(VolumeError::format(
            dir,
            format!(
                "no series to read ({}); the folder holds: {}",
                rule.describe(),
                list.join("; ")
            ),
        ));
    };
    for other in &eligible[1..] {
        passed_over.push((
            other.uid.clone(),
            format!("fewer slice positions or thicker slices than {}", best.uid),
        ));
    }
    let reason = format!(
        "{} ({}); the most slice positions among {n} eligible of {} series",
        best.line(),
        rule.describe(),
        series.len()
    );
    Ok(SeriesChoice {
        uid: best.uid.clone(),
        description: best.description.clone(),
        reason,
        passed_over,
    })
}
