//! TensorBoard scalars: an `events.out.tfevents.*` file that `tensorboard --logdir RUN_DIR`
//! reads while a run is going, beside the CSVs (which stay the record).
//!
//! The format is small enough to write directly: a file of TFRecords (u64 length, masked
//! CRC-32C of the length, the bytes, masked CRC-32C of the bytes), each holding one `Event`
//! protobuf. The first event carries `file_version = "brain.Event:2"`; each later one a step, a
//! wall time and a `Summary` of `(tag, simple_value)` pairs. Only those fields are encoded.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Appends scalar events to one event file (a new file per process, as TensorBoard expects).
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if missing).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let now = wall_time();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.cures",
            now as u64,
            std::process::id()
        ));
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = Self {
            path,
            out: BufWriter::new(file),
        };
        let mut ev = Vec::new();
        put_double(&mut ev, 1, now);
        put_bytes(&mut ev, 3, b"brain.Event:2");
        w.record(&ev)?;
        w.flush()?;
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event at `step` holding every finite value of `scalars` under its tag.
    pub fn scalars(&mut self, step: u64, scalars: &[(String, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in scalars.iter().filter(|(_, v)| v.is_finite()) {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_float(&mut value, 2, *v as f32);
            put_bytes(&mut summary, 1, &value);
        }
        let mut ev = Vec::new();
        put_double(&mut ev, 1, wall_time());
        put_varint_field(&mut ev, 2, step);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)
    }

    /// Push what is buffered to the file, so a watching TensorBoard sees it.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out
            .write_all(&rec)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Cut the event files in `dir` back to the events of steps at most `up_to`, for a resume from
/// that step: the events a run wrote past its checkpoint would otherwise stand beside the
/// resumed run's, and TensorBoard would show those steps twice. A record a kill cut short ends
/// its file. Returns what was cut, per file.
pub fn cut_back(dir: &Path, up_to: u64) -> Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    let mut notes = Vec::new();
    for path in files {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let (mut at, mut keep, mut past, mut torn) = (0, None, 0usize, false);
        while at < bytes.len() {
            let Some((data, next)) = next_record(&bytes, at) else {
                torn = true;
                break;
            };
            if keep.is_none() && event_step(data).is_some_and(|s| s > up_to) {
                keep = Some(at);
            }
            if keep.is_some() {
                past += 1;
            }
            at = next;
        }
        let keep = keep.unwrap_or(at);
        if keep < bytes.len() {
            crate::metrics::write_atomic(&path, &bytes[..keep])?;
            let mut what = Vec::new();
            if past > 0 {
                what.push(format!("{past} events past step {up_to} cut"));
            }
            if torn {
                what.push("a record cut short by an interrupted write dropped".to_string());
            }
            notes.push(format!("{}: {}", path.display(), what.join("; ")));
        }
    }
    Ok(notes)
}

/// The steps of the events in the file at `path`, in order (the version event has none); an
/// error when a record is cut short or damaged.
pub fn event_steps(path: &Path) -> Result<Vec<u64>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut at, mut steps) = (0, Vec::new());
    while at < bytes.len() {
        let Some((data, next)) = next_record(&bytes, at) else {
            anyhow::bail!("{}: damaged record at byte {at}", path.display());
        };
        steps.extend(event_step(data));
        at = next;
    }
    Ok(steps)
}

/// The data of the record at `at` and where the next starts; `None` when it is cut short or
/// its checksums do not match.
fn next_record(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len_bytes = b.get(at..at + 8)?;
    let len = usize::try_from(u64::from_le_bytes(len_bytes.try_into().ok()?)).ok()?;
    let crc = u32::from_le_bytes(b.get(at + 8..at + 12)?.try_into().ok()?);
    let end = at.checked_add(12)?.checked_add(len)?;
    let data = b.get(at + 12..end)?;
    let dcrc = u32::from_le_bytes(b.get(end..end + 4)?.try_into().ok()?);
    (crc == masked_crc(len_bytes) && dcrc == masked_crc(data)).then_some((data, end + 4))
}

/// The `step` (field 2) of an encoded `Event`, if it has one.
fn event_step(b: &[u8]) -> Option<u64> {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let x = *b.get(*i)?;
            *i += 1;
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        match (key >> 3, key & 7) {
            (2, 0) => return varint(b, &mut i),
            (_, 0) => {
                varint(b, &mut i)?;
            }
            (_, 1) => i += 8,
            (_, 5) => i += 4,
            (_, 2) => {
                let n = usize::try_from(varint(b, &mut i)?).ok()?;
                i = i.checked_add(n)?;
            }
            _ => return None,
        }
    }
    None
}

/// The numeric fields of a serialisable row as `(prefix/field, value)` pairs.
pub fn numeric_fields<T: serde::Serialize>(prefix: &str, row: &T) -> Vec<(String, f64)> {
    match serde_json::to_value(row) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_f64().map(|x| (format!("{prefix}/{k}"), x)))
            .collect(),
        _ => Vec::new(),
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_varint(out, (u64::from(field) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_float(out: &mut Vec<u8>, field: u32, v: f32) {
    put_varint(out, (u64::from(field) << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

/// CRC-32C (Castagnoli), bitwise with a nibble table: event files are small.
fn crc32c(data: &[u8]) -> u32 {
    const POLY: u32 = 0x82f6_3b78;
    let table: [u32; 16] = std::array::from_fn(|i| {
        let mut c = i as u32;
        for _ in 0..4 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
        }
        c
    });
    let mut crc = !0u32;
    for &b in data {
        crc = (crc >> 4) ^ table[((crc ^ u32::from(b)) & 0xf) as usize];
        crc = (crc >> 4) ^ table[((crc ^ (u32::from(b) >> 4)) & 0xf) as usize];
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal reader of what the writer emits: records with checked CRCs, and per event
    /// (step, [(tag, value)], file_version).
    type Event = (u64, Vec<(String, f32)>, Option<String>);

    fn varint(b: &[u8], i: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let x = b[*i];
            *i += 1;
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    /// (field, wire type, payload) of each field of a message.
    fn fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
        let (mut i, mut out) = (0, Vec::new());
        while i < b.len() {
            let key = varint(b, &mut i);
            let (f, wt) = (key >> 3, key & 7);
            let payload = match wt {
                0 => varint(b, &mut i).to_le_bytes().to_vec(),
                1 => {
                    i += 8;
                    b[i - 8..i].to_vec()
                }
                5 => {
                    i += 4;
                    b[i - 4..i].to_vec()
                }
                2 => {
                    let n = varint(b, &mut i) as usize;
                    i += n;
                    b[i - n..i].to_vec()
                }
                _ => panic!("wire type {wt}"),
            };
            out.push((f, wt, payload));
        }
        out
    }

    fn read(path: &Path) -> Vec<Event> {
        let b = std::fs::read(path).expect("read");
        let (mut i, mut out) = (0, Vec::new());
        while i < b.len() {
            let len_bytes = &b[i..i + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().expect("8")) as usize;
            let crc = u32::from_le_bytes(b[i + 8..i + 12].try_into().expect("4"));
            assert_eq!(crc, masked_crc(len_bytes), "length CRC");
            let data = &b[i + 12..i + 12 + len];
            let crc = u32::from_le_bytes(b[i + 12 + len..i + 16 + len].try_into().expect("4"));
            assert_eq!(crc, masked_crc(data), "data CRC");
            i += 16 + len;
            let (mut step, mut vals, mut version) = (0, Vec::new(), None);
            for (f, _, p) in fields(data) {
                match f {
                    2 => step = u64::from_le_bytes(p.try_into().expect("8")),
                    3 => version = Some(String::from_utf8(p).expect("utf8")),
                    5 => {
                        for (_, _, v) in fields(&p) {
                            let mut tag = String::new();
                            let mut x = f32::NAN;
                            for (ff, _, pp) in fields(&v) {
                                match ff {
                                    1 => tag = String::from_utf8(pp).expect("utf8"),
                                    2 => x = f32::from_le_bytes(pp.try_into().expect("4")),
                                    _ => {}
                                }
                            }
                            vals.push((tag, x));
                        }
                    }
                    _ => {}
                }
            }
            out.push((step, vals, version));
        }
        out
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" (RFC 3720, B.4).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn scalars_round_trip_through_the_event_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = EventWriter::create(&dir.path().join("tb")).expect("create");
        w.scalars(
            1,
            &[("train/loss".into(), 0.25), ("train/kl".into(), f64::NAN)],
        )
        .expect("write");
        w.scalars(300, &[("eval/heldout".into(), 0.5)])
            .expect("write");
        w.flush().expect("flush");
        let ev = read(w.path());
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].2.as_deref(), Some("brain.Event:2"));
        assert_eq!(ev[1].0, 1);
        assert_eq!(
            ev[1].1,
            [("train/loss".to_string(), 0.25)],
            "NaN is left out"
        );
        assert_eq!(ev[2].0, 300, "a multi-byte varint step");
        assert_eq!(ev[2].1, [("eval/heldout".to_string(), 0.5)]);
        let name = w.path().file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.starts_with("events.out.tfevents."), "{name}");
    }

    #[test]
    fn numeric_fields_take_numbers_only() {
        #[derive(serde::Serialize)]
        struct Row {
            step: u64,
            loss: f64,
            name: String,
        }
        let f = numeric_fields(
            "train",
            &Row {
                step: 3,
                loss: -1.5,
                name: "x".into(),
            },
        );
        assert_eq!(
            f,
            [
                ("train/loss".to_string(), -1.5),
                ("train/step".to_string(), 3.0)
            ]
        );
    }

    #[test]
    fn cut_back_keeps_the_events_up_to_the_step_and_drops_a_torn_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tb = dir.path().join("tb");
        let mut w = EventWriter::create(&tb).expect("create");
        for step in 0..=4 {
            w.scalars(step, &[("train/x".into(), step as f64)])
                .expect("scalars");
        }
        w.flush().expect("flush");
        let path = w.path().to_path_buf();
        drop(w);
        // A kill in the middle of the next record.
        let mut bytes = std::fs::read(&path).expect("read");
        let whole = bytes.len();
        bytes.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &bytes).expect("write");
        let notes = cut_back(&tb, 2).expect("cut");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("2 events past step 2 cut"), "{notes:?}");
        assert!(notes[0].contains("cut short"), "{notes:?}");
        let steps: Vec<u64> = read(&path).iter().skip(1).map(|e| e.0).collect();
        assert_eq!(steps, [0, 1, 2]);
        // Nothing past the step: the file is left as it is.
        let before = std::fs::read(&path).expect("read");
        assert!(before.len() < whole);
        assert!(cut_back(&tb, 2).expect("cut").is_empty());
        assert_eq!(std::fs::read(&path).expect("read"), before);
        assert!(cut_back(&dir.path().join("none"), 2)
            .expect("no dir")
            .is_empty());
    }
}
