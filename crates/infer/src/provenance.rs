//! What a synthetic image says about itself, so that it is never mistaken for an acquired one:
//! the DICOM SeriesDescription ("SYNTHETIC ..."), DerivationDescription (tool, version, model)
//! and the NIfTI `descrip`, from the checkpoint that made it. The DICOM writer adds the
//! references to the source series (`volume::io::dicom::write_series`).

use crate::checkpoint::LoadedGenerator;
use std::path::Path;
use volume::io::dicom::SeriesInfo;

/// The SeriesDescription of every synthetic series (DICOM LO: at most 64 characters).
pub const SERIES_DESCRIPTION: &str = "SYNTHETIC CTPA (ncct2ctpa)";

/// One model behind a synthetic image: its run, checkpoint and step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// The run folder's name (the checkpoint's parent run), else the checkpoint folder's.
    pub run: String,
    /// The checkpoint's name (`best`, `final`, `latest`, ...; `-ema` added for EMA weights).
    pub checkpoint: String,
    pub step: u64,
}

impl ModelRef {
    /// From the checkpoint folder (`RUN/checkpoints/NAME`, or any folder) and its step.
    pub fn new(checkpoint: &Path, step: u64) -> Self {
        let name = |p: Option<&Path>| {
            p.and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "?".into())
        };
        let parent = checkpoint.parent();
        let run = match parent.and_then(Path::file_name) {
            Some(n) if n == "checkpoints" => name(parent.and_then(Path::parent)),
            _ => name(Some(checkpoint)),
        };
        Self {
            run,
            checkpoint: name(Some(checkpoint)),
            step,
        }
    }

    fn of(model: &LoadedGenerator) -> Self {
        let mut m = Self::new(&model.checkpoint, model.step);
        if model.ema {
            m.checkpoint.push_str("-ema");
        }
        m
    }
}

/// The model (or the ensemble of models, averaged) behind a synthetic image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// `ncct2ctpa X.Y.Z`.
    pub tool: String,
    /// One model, or the members of an ensemble in the order given.
    pub models: Vec<ModelRef>,
}

impl Provenance {
    pub fn of(model: &LoadedGenerator) -> Self {
        Self::of_all(std::slice::from_ref(model))
    }

    /// The ensemble of `models` (their predictions averaged); one model is [`Self::of`].
    pub fn of_all(models: &[LoadedGenerator]) -> Self {
        Self::with(models.iter().map(ModelRef::of).collect())
    }

    /// From the checkpoint folder (`RUN/checkpoints/NAME`, or any folder) and its step.
    pub fn new(checkpoint: &Path, step: u64) -> Self {
        Self::with(vec![ModelRef::new(checkpoint, step)])
    }

    fn with(models: Vec<ModelRef>) -> Self {
        Self {
            tool: format!("ncct2ctpa {}", env!("CARGO_PKG_VERSION")),
            models,
        }
    }

    /// DerivationDescription: what made the image, from what.
    pub fn derivation(&self, source: &str) -> String {
        let each = |m: &ModelRef| {
            format!(
                "run {} checkpoint {} at step {}",
                m.run, m.checkpoint, m.step
            )
        };
        let models = match self.models.as_slice() {
            [one] => format!("model {}", each(one)),
            all => format!(
                "the mean of {} models ({})",
                all.len(),
                all.iter().map(each).collect::<Vec<_>>().join("; ")
            ),
        };
        format!(
            "SYNTHETIC contrast-enhanced CT (CT pulmonary angiogram) computed from the \
             non-contrast CT {source} by {}, {models}; not an acquired image",
            self.tool
        )
    }

    /// The DICOM series information (`new_study`: a new StudyInstanceUID).
    pub fn series_info(&self, source: &str, new_study: bool) -> SeriesInfo {
        SeriesInfo {
            description: SERIES_DESCRIPTION.into(),
            derivation: Some(self.derivation(source)),
            new_study,
        }
    }

    /// The NIfTI `descrip` (79 bytes at most; the writer cuts longer, so an ensemble says how
    /// many first).
    pub fn nifti_descrip(&self) -> String {
        let each = |m: &ModelRef| format!("run {} {}@{}", m.run, m.checkpoint, m.step);
        match self.models.as_slice() {
            [one] => format!("SYNTHETIC CTPA {} {}", self.tool, each(one)),
            all => format!(
                "SYNTHETIC CTPA {} mean of {}: {}",
                self.tool,
                all.len(),
                all.iter().map(each).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_run_above_checkpoints_and_says_synthetic() {
        let p = Provenance::new(Path::new("/x/runs/big/checkpoints/best"), 1200);
        let m = &p.models[0];
        assert_eq!((m.run.as_str(), m.checkpoint.as_str()), ("big", "best"));
        assert!(p.tool.starts_with("ncct2ctpa "));
        let d = p.nifti_descrip();
        assert!(d.starts_with("SYNTHETIC CTPA ncct2ctpa ") && d.ends_with("run big best@1200"));
        let info = p.series_info("series 1.2.3", false);
        assert!(info.description.starts_with("SYNTHETIC") && info.description.len() <= 64);
        let der = info.derivation.unwrap();
        assert!(
            der.contains("series 1.2.3") && der.contains("run big checkpoint best at step 1200")
        );
        // a checkpoint folder outside a run names itself
        let q = Provenance::new(Path::new("exported/ckpt7"), 7);
        let m = &q.models[0];
        assert_eq!((m.run.as_str(), m.checkpoint.as_str()), ("ckpt7", "ckpt7"));
    }

    #[test]
    fn an_ensemble_names_every_member_and_how_many() {
        let p = Provenance {
            models: vec![
                ModelRef::new(Path::new("/r/seed-1/checkpoints/final"), 1500),
                ModelRef::new(Path::new("/r/seed-2/checkpoints/best"), 250),
            ],
            ..Provenance::new(Path::new("x"), 0)
        };
        let d = p.nifti_descrip();
        assert!(d.starts_with("SYNTHETIC CTPA ncct2ctpa "), "{d}");
        assert!(
            d.ends_with("mean of 2: run seed-1 final@1500, run seed-2 best@250"),
            "{d}"
        );
        let der = p.derivation("file a.nii.gz");
        assert!(
            der.contains(
                "the mean of 2 models (run seed-1 checkpoint final at step 1500; run \
                          seed-2 checkpoint best at step 250)"
            ),
            "{der}"
        );
    }
}
