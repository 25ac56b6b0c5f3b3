//! Opening one DICOM file: the element-length guard first, then dicom-rs on bytes it can parse.
//!
//! Every DICOM file this crate reads goes through [`open`], so that no path reaches dicom-rs
//! unchecked. Deflated Explicit VR Little Endian files need more than the check: dicom-object
//! 0.8.2 never inflates a data set (its file reader builds an explicit VR LE parser straight on
//! the file; no `adapt_reader` call exists in dicom-object or dicom-parser, and our build of
//! dicom-transfer-syntax-registry has no deflate codec at all), so it parsed the compressed
//! bytes as elements: garbage in valid files, and the 3.6 GB allocation the fuzz target found
//! (`fuzz/regressions/dicom-oom-deflated-length.dcm`). Here the data set is inflated by
//! [`super::lengths`] (strict, capped), its lengths checked, and dicom-rs parses the inflated
//! bytes as Explicit VR Little Endian, the encoding a deflated data set has inside (PS3.5 A.5).
//! The object's meta then says Explicit VR Little Endian, which is what its bytes are, so
//! pixel decoding treats them as native.

use super::lengths::{self, Checked, DEFLATED_EXPLICIT_VR_LE};
use dicom_encoding::transfer_syntax::{TransferSyntax, TransferSyntaxIndex};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};
use dicom_transfer_syntax_registry::{entries, TransferSyntaxRegistry};
use std::io::{Cursor, Read};
use std::path::Path;

/// Transfer syntax index for inflated data sets: the deflated UID resolves to Explicit VR
/// Little Endian, every other UID as in the standard registry.
struct InflatedIndex(TransferSyntaxRegistry);

impl TransferSyntaxIndex for InflatedIndex {
    fn get(&self, uid: &str) -> Option<&TransferSyntax> {
        let uid = uid.trim_end_matches(|c: char| c.is_whitespace() || c == '\0');
        if uid == DEFLATED_EXPLICIT_VR_LE {
            self.0.get(entries::EXPLICIT_VR_LITTLE_ENDIAN.uid())
        } else {
            self.0.get(uid)
        }
    }
}

/// A file as read by [`open`].
pub struct Opened {
    pub obj: DefaultDicomObject,
    /// The file's data set was deflated (its meta now says Explicit VR Little Endian, the
    /// encoding of the inflated bytes); for reporting the file's own transfer syntax.
    pub inflated: bool,
}

/// Reads `path` (up to, not including, `read_until` when given), after checking its element
/// lengths. `Err` is the reason, for a message that already names the file.
pub fn open(path: &Path, read_until: Option<Tag>) -> Result<Opened, String> {
    // Before dicom-rs, which allocates whatever an element's length field declares.
    let checked = lengths::check_file(path).map_err(|e| format!("corrupt DICOM file: {e}"))?;
    let mut options = OpenFileOptions::new();
    if let Some(tag) = read_until {
        options = options.read_until(tag);
    }
    let not_dicom = |e| format!("not a DICOM file ({e})");
    match checked {
        Checked::Plain => Ok(Opened {
            obj: options.open_file(path).map_err(not_dicom)?,
            inflated: false,
        }),
        Checked::Deflated { meta, data_set } => {
            let mut obj = options
                .read_preamble(ReadPreamble::Never)
                .transfer_syntax_index(InflatedIndex(TransferSyntaxRegistry))
                .from_reader(Cursor::new(meta).chain(Cursor::new(data_set)))
                .map_err(not_dicom)?;
            obj.meta_mut()
                .set_transfer_syntax(&entries::EXPLICIT_VR_LITTLE_ENDIAN);
            tracing::trace!("{}: deflated data set inflated and read", path.display());
            Ok(Opened {
                obj,
                inflated: true,
            })
        }
    }
}
