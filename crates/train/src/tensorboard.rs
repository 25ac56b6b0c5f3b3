//! TensorBoard event files, written beside `metrics.jsonl` so `tensorboard --logdir runs/`
//! shows every run side by side, live.
//!
//! The format is TensorFlow's: a file `events.out.tfevents.<seconds>.<host>.<pid>.ncct2ctpa`
//! of TFRecords (`u64` length, masked CRC-32C of the length, the bytes, masked CRC-32C of the
//! bytes; all little-endian), each holding one `tensorflow.Event` protobuf. The messages are
//! declared here with `prost`'s derive, field numbers as in TensorBoard's `event.proto`,
//! `summary.proto` and `tensor.proto` (only the fields we write). A scalar is a
//! `Summary.Value.simple_value`, an image a PNG in `Summary.Image`, text a string tensor with
//! the `text` plugin's metadata, as `torch.utils.tensorboard` writes them.
//!
//! **Resumed runs.** Each process writes its own file. A resumed run's file starts with a
//! `SessionLog.START` event at the first step it trains: TensorBoard then drops the events at
//! or after that step from earlier files (those the interrupted process wrote after its
//! checkpoint), so the curves continue without duplicates, as TensorFlow's own restarts do.
//!
//! [`read_records`] and [`read_events`] read the files back, checking every CRC (the tests,
//! and anyone debugging a file).

use prost::Message;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The messages of TensorBoard's protos that we write (field numbers are the format).
pub mod proto {
    /// `tensorflow.Event`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        #[prost(int64, tag = "2")]
        pub step: i64,
        #[prost(string, optional, tag = "3")]
        pub file_version: Option<String>,
        #[prost(message, optional, tag = "5")]
        pub summary: Option<Summary>,
        // 6 is the deprecated LogMessage
        #[prost(message, optional, tag = "7")]
        pub session_log: Option<SessionLog>,
    }

    /// `tensorflow.SessionLog`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionLog {
        /// 1 = START, 2 = STOP, 3 = CHECKPOINT.
        #[prost(int32, tag = "1")]
        pub status: i32,
        #[prost(string, tag = "3")]
        pub msg: String,
    }

    /// `SessionLog.START`.
    pub const SESSION_START: i32 = 1;

    /// `tensorflow.Summary`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<Value>,
    }

    /// `tensorflow.Summary.Value`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(string, tag = "1")]
        pub tag: String,
        #[prost(float, optional, tag = "2")]
        pub simple_value: Option<f32>,
        #[prost(message, optional, tag = "4")]
        pub image: Option<Image>,
        #[prost(message, optional, tag = "8")]
        pub tensor: Option<TensorProto>,
        #[prost(message, optional, tag = "9")]
        pub metadata: Option<SummaryMetadata>,
    }

    /// `tensorflow.Summary.Image`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(int32, tag = "1")]
        pub height: i32,
        #[prost(int32, tag = "2")]
        pub width: i32,
        /// 1 grey, 3 RGB, 4 RGBA.
        #[prost(int32, tag = "3")]
        pub colorspace: i32,
        #[prost(bytes = "vec", tag = "4")]
        pub encoded_image_string: Vec<u8>,
    }

    /// `tensorflow.SummaryMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SummaryMetadata {
        #[prost(message, optional, tag = "1")]
        pub plugin_data: Option<PluginData>,
    }

    /// `tensorflow.SummaryMetadata.PluginData`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PluginData {
        #[prost(string, tag = "1")]
        pub plugin_name: String,
        #[prost(bytes = "vec", tag = "2")]
        pub content: Vec<u8>,
    }

    /// `tensorflow.TensorProto` (strings only).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        /// `DataType`: 7 = DT_STRING.
        #[prost(int32, tag = "1")]
        pub dtype: i32,
        #[prost(message, optional, tag = "2")]
        pub tensor_shape: Option<TensorShapeProto>,
        #[prost(bytes = "vec", repeated, tag = "8")]
        pub string_val: Vec<Vec<u8>>,
    }

    /// `tensorflow.TensorShapeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "2")]
        pub dim: Vec<Dim>,
    }

    /// `tensorflow.TensorShapeProto.Dim`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dim {
        #[prost(int64, tag = "1")]
        pub size: i64,
    }

    /// `DT_STRING`.
    pub const DT_STRING: i32 = 7;
}

/// TFRecord's masked CRC-32C (Castagnoli) of `data`.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// A damaged or truncated event file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: record {index} at byte {offset}: {problem}")]
    Bad {
        path: PathBuf,
        index: usize,
        offset: u64,
        problem: String,
    },
}

/// The records of a TFRecord file, every CRC checked. A file that ends inside a record (a
/// writer killed mid-write) is an error naming the record.
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>, RecordError> {
    let io = |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    BufReader::new(File::open(path).map_err(io)?)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = |problem: String| RecordError::Bad {
            path: path.to_path_buf(),
            index: out.len(),
            offset: at as u64,
            problem,
        };
        let head = bytes
            .get(at..at + 12)
            .ok_or_else(|| bad("truncated header".into()))?;
        let (len_bytes, len_crc) = head.split_at(8);
        let stored = u32::from_le_bytes(len_crc.try_into().unwrap_or_default());
        if masked_crc(len_bytes) != stored {
            return Err(bad("the length's CRC does not match".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default());
        let len = usize::try_from(len).map_err(|_| bad(format!("length {len}")))?;
        let end = at
            .checked_add(12 + len + 4)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| bad(format!("truncated data ({len} bytes announced)")))?;
        let data = &bytes[at + 12..at + 12 + len];
        let stored = u32::from_le_bytes(bytes[end - 4..end].try_into().unwrap_or_default());
        if masked_crc(data) != stored {
            return Err(bad("the data's CRC does not match".into()));
        }
        out.push(data.to_vec());
        at = end;
    }
    Ok(out)
}

/// The events of a file ([`read_records`], then each decoded).
pub fn read_events(path: &Path) -> anyhow::Result<Vec<proto::Event>> {
    read_records(path)?
        .iter()
        .enumerate()
        .map(|(i, r)| {
            proto::Event::decode(r.as_slice())
                .map_err(|e| anyhow::anyhow!("{}: record {i} is not an Event: {e}", path.display()))
        })
        .collect()
}

/// Appends events to this process's event file in a run folder.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: File,
    /// Seconds since the epoch for `wall_time` (the system clock; tests fix it).
    clock: fn() -> f64,
}

impl EventWriter {
    /// Creates this process's event file in `dir`. `resumed_at`: the first step a resumed run
    /// trains (a `SessionLog.START` there makes TensorBoard drop later events of earlier
    /// files).
    pub fn create(dir: &Path, resumed_at: Option<u64>) -> anyhow::Result<Self> {
        Self::create_with_clock(dir, resumed_at, wall_time)
    }

    /// [`Self::create`] with `clock` for every `wall_time` and the file name's seconds (the
    /// golden test fixes it). The file is always new: a name taken (two writers in one
    /// second) gets a `.1`, `.2`, ... suffix.
    pub fn create_with_clock(
        dir: &Path,
        resumed_at: Option<u64>,
        clock: fn() -> f64,
    ) -> anyhow::Result<Self> {
        let base = format!(
            "events.out.tfevents.{}.{}.{}.ncct2ctpa",
            clock() as u64,
            hostname(),
            std::process::id()
        );
        let (path, file) = (0..1000)
            .map(|i| match i {
                0 => dir.join(&base),
                i => dir.join(format!("{base}.{i}")),
            })
            .find_map(|path| {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path);
                match file {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    other => Some((path, other)),
                }
            })
            .ok_or_else(|| anyhow::anyhow!("{}: no free event file name", dir.display()))?;
        let file = file.map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
        let mut w = Self { path, file, clock };
        w.write(proto::Event {
            wall_time: clock(),
            file_version: Some("brain.Event:2".into()),
            ..Default::default()
        })?;
        if let Some(step) = resumed_at {
            w.write(proto::Event {
                wall_time: clock(),
                step: step as i64,
                session_log: Some(proto::SessionLog {
                    status: proto::SESSION_START,
                    msg: format!("resumed at step {step}"),
                }),
                ..Default::default()
            })?;
        }
        tracing::debug!("TensorBoard events to {}", w.path.display());
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars at `step`, one event (non-finite values are left out: TensorBoard cannot
    /// draw them).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> anyhow::Result<()> {
        let value = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(tag, v)| proto::Value {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
                ..Default::default()
            })
            .collect();
        self.summary(step, value)
    }

    /// A PNG image (its bytes as they are) at `step`.
    pub fn png(&mut self, step: u64, tag: &str, png: Vec<u8>) -> anyhow::Result<()> {
        let (width, height, colorspace) =
            png_size(&png).ok_or_else(|| anyhow::anyhow!("{tag}: not a PNG image"))?;
        let image = proto::Image {
            height,
            width,
            colorspace,
            encoded_image_string: png,
        };
        let value = proto::Value {
            tag: tag.into(),
            image: Some(image),
            ..Default::default()
        };
        self.summary(step, vec![value])
    }

    /// Markdown text at `step` (TensorBoard's text plugin).
    pub fn text(&mut self, step: u64, tag: &str, markdown: &str) -> anyhow::Result<()> {
        let value = proto::Value {
            tag: tag.into(),
            tensor: Some(proto::TensorProto {
                dtype: proto::DT_STRING,
                tensor_shape: Some(proto::TensorShapeProto { dim: vec![] }),
                string_val: vec![markdown.as_bytes().to_vec()],
            }),
            metadata: Some(proto::SummaryMetadata {
                plugin_data: Some(proto::PluginData {
                    plugin_name: "text".into(),
                    content: Vec::new(),
                }),
            }),
            ..Default::default()
        };
        self.summary(step, vec![value])
    }

    fn summary(&mut self, step: u64, value: Vec<proto::Value>) -> anyhow::Result<()> {
        if value.is_empty() {
            return Ok(());
        }
        self.write(proto::Event {
            wall_time: (self.clock)(),
            step: step as i64,
            summary: Some(proto::Summary { value }),
            ..Default::default()
        })
    }

    /// Writes one event as a TFRecord and flushes it (TensorBoard reads files as they grow).
    pub fn write(&mut self, event: proto::Event) -> anyhow::Result<()> {
        self.file
            .write_all(&frame(&event.encode_to_vec()))
            .and_then(|()| self.file.flush())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", self.path.display()))
    }
}

/// What TensorBoard shows for a run folder's event files (read in name order), with its step
/// semantics: a `SessionLog.START` at step `s` drops the events at or after `s` read before
/// it. Scalars as `(step, value)`, images as `(step, width, height)`, text as `(step, text)`,
/// per tag in step order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunView {
    pub scalars: std::collections::BTreeMap<String, Vec<(i64, f32)>>,
    pub images: std::collections::BTreeMap<String, Vec<(i64, i32, i32)>>,
    pub texts: std::collections::BTreeMap<String, Vec<(i64, String)>>,
}

impl RunView {
    /// The view of every `events.out.tfevents.*` file in `dir`.
    pub fn of_dir(dir: &Path) -> anyhow::Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
            })
            .collect();
        files.sort();
        let mut view = Self::default();
        for f in files {
            for e in read_events(&f)? {
                view.add(&e);
            }
        }
        Ok(view)
    }

    fn add(&mut self, e: &proto::Event) {
        if e.session_log
            .as_ref()
            .is_some_and(|l| l.status == proto::SESSION_START)
        {
            self.scalars
                .values_mut()
                .for_each(|v| v.retain(|x| x.0 < e.step));
            self.images
                .values_mut()
                .for_each(|v| v.retain(|x| x.0 < e.step));
            self.texts
                .values_mut()
                .for_each(|v| v.retain(|x| x.0 < e.step));
        }
        for v in e.summary.iter().flat_map(|s| &s.value) {
            if let Some(x) = v.simple_value {
                self.scalars
                    .entry(v.tag.clone())
                    .or_default()
                    .push((e.step, x));
            }
            if let Some(i) = &v.image {
                let entry = self.images.entry(v.tag.clone()).or_default();
                entry.push((e.step, i.width, i.height));
            }
            if let Some(t) = v.tensor.as_ref().and_then(|t| t.string_val.first()) {
                let text = String::from_utf8_lossy(t).into_owned();
                self.texts
                    .entry(v.tag.clone())
                    .or_default()
                    .push((e.step, text));
            }
        }
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This machine's name for the file name (as TensorFlow's writers put it there).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "localhost".into())
}

/// Width, height and TensorBoard colorspace of a PNG, from its IHDR chunk.
fn png_size(png: &[u8]) -> Option<(i32, i32, i32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !png.starts_with(SIGNATURE) || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |r: std::ops::Range<usize>| -> Option<i32> {
        i32::try_from(u32::from_be_bytes(png.get(r)?.try_into().ok()?)).ok()
    };
    let colorspace = match png.get(25)? {
        0 => 1,     // grey
        2 | 3 => 3, // RGB, palette
        4 => 2,     // grey + alpha
        _ => 4,     // RGBA
    };
    Some((be(16..20)?, be(20..24)?, colorspace))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASKED_ZEROS: u32 = 0x0FD7_FFFA;

    /// CRC-32C check value (RFC 3720 B.4: 32 bytes of zeros -> 0x8A9136AA) and TFRecord's
    /// mask.
    #[test]
    fn crc32c_and_its_mask() {
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
        // ((0x8A9136AA >> 15) | (0x8A9136AA << 17)) + 0xa282ead8, mod 2^32 (TFRecord's mask,
        // computed by hand)
        assert_eq!(masked_crc(&[0u8; 32]), MASKED_ZEROS);
    }

    #[test]
    fn records_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), Some(41)).unwrap();
        w.scalars(42, &[("train/l1".into(), 0.25), ("nan".into(), f64::NAN)])
            .unwrap();
        w.text(0, "config", "seed = 1").unwrap();
        let events = read_events(w.path()).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let start = events[1].session_log.as_ref().unwrap();
        assert_eq!((events[1].step, start.status), (41, proto::SESSION_START));
        let values = &events[2].summary.as_ref().unwrap().value;
        assert_eq!(values.len(), 1, "the NaN is left out");
        assert_eq!(
            (values[0].tag.as_str(), values[0].simple_value),
            ("train/l1", Some(0.25))
        );
        let text = events[3].summary.as_ref().unwrap().value[0]
            .tensor
            .as_ref()
            .unwrap();
        assert_eq!(text.string_val, vec![b"seed = 1".to_vec()]);

        // a flipped byte in the last record's data, then a truncated file
        let mut bytes = std::fs::read(w.path()).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        let bad = dir.path().join("bad");
        std::fs::write(&bad, &bytes).unwrap();
        let e = read_records(&bad).unwrap_err().to_string();
        assert!(e.contains("record 3") && e.contains("data's CRC"), "{e}");
        std::fs::write(&bad, &bytes[..n - 2]).unwrap();
        let e = read_records(&bad).unwrap_err().to_string();
        assert!(e.contains("truncated data"), "{e}");
    }

    #[test]
    fn png_size_reads_ihdr() {
        // an 3x2 RGBA PNG header (IHDR only; enough for the size)
        let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        png.extend_from_slice(&3u32.to_be_bytes());
        png.extend_from_slice(&2u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0]);
        assert_eq!(png_size(&png), Some((3, 2, 4)));
        assert_eq!(png_size(b"GIF89a"), None);
    }
}
