//! What a synthetic image says about itself, so that it is never mistaken for an acquired one:
//! the DICOM SeriesDescription ("SYNTHETIC ..."), DerivationDescription (tool, version, model)
//! and the NIfTI `descrip`, from the checkpoint that made it. The DICOM writer adds the
//! references to the source series (`volume::io::dicom::write_series`).

use crate::checkpoint::LoadedGenerator;
use std::path::Path;
use volume::io::dicom::SeriesInfo;

/// The SeriesDescription of every synthetic series (DICOM LO: at most 64 characters).
pub const SERIES_DESCRIPTION: &str = "SYNTHETIC CTPA (ncct2ctpa)";

/// The model behind a synthetic image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// `ncct2ctpa X.Y.Z`.
    pub tool: String,
    /// The run folder's name (the checkpoint's parent run), else the checkpoint folder's.
    pub run: String,
    /// The checkpoint's name (`best`, `final`, `latest`, ...; `-ema` added for EMA weights).
    pub checkpoint: String,
    pub step: u64,
}

impl Provenance {
    pub fn of(model: &LoadedGenerator) -> Self {
        let mut p = Self::new(&model.checkpoint, model.step);
        if model.ema {
            p.checkpoint.push_str("-ema");
        }
        p
    }

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
            tool: format!("ncct2ctpa {}", env!("CARGO_PKG_VERSION")),
            run,
            checkpoint: name(Some(checkpoint)),
            step,
        }
    }

    /// DerivationDescription: what made the image, from what.
    pub fn derivation(&self, source: &str) -> String {
        format!(
            "SYNTHETIC contrast-enhanced CT (CT pulmonary angiogram) computed from the \
             non-contrast CT {source} by {}, model run {} checkpoint {} at step {}; not an \
             acquired image",
            self.tool, self.run, self.checkpoint, self.step
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

    /// The NIfTI `descrip` (79 bytes at most; the writer cuts longer).
    pub fn nifti_descrip(&self) -> String {
        format!(
            "SYNTHETIC CTPA {} run {} {}@{}",
            self.tool, self.run, self.checkpoint, self.step
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_run_above_checkpoints_and_says_synthetic() {
        let p = Provenance::new(Path::new("/x/runs/big/checkpoints/best"), 1200);
        assert_eq!((p.run.as_str(), p.checkpoint.as_str()), ("big", "best"));
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
        assert_eq!((q.run.as_str(), q.checkpoint.as_str()), ("ckpt7", "ckpt7"));
    }
}
