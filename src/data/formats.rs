//! Reading one dataset file into records: JSON Lines, a JSON array, CSV or Parquet.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use super::{decode_text, Record};

/// The records of one file, by its extension (`.json` may hold JSON Lines or one array).
pub(crate) fn read_file(path: &Path) -> Result<Vec<Record>> {
    let origin = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "parquet" {
        return read_parquet(path, &origin);
    }
    if !["jsonl", "json", "csv"].contains(&ext) {
        bail!("{origin}: unknown dataset format {ext:?} (expected .jsonl, .json, .csv or .parquet, or a dataset folder)");
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read dataset {origin}"))?;
    let text = decode_text(&bytes, &origin)?;
    match ext {
        "csv" => read_csv(text, &origin),
        _ if text.trim_start().starts_with('[') => read_json_array(text, &origin),
        _ => read_jsonl(text, &origin),
    }
}

/// A JSON object's fields as written: a number keeps its literal text (as a string: `0.1`,
/// `1e20` and `123456789012345678901234567890` stay exactly that), other values parse as JSON;
/// a key given twice is an error (JSON parsers silently keep one of them).
fn exact_object(
    raw: &serde_json::value::RawValue,
) -> std::result::Result<Map<String, Value>, String> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, &'de serde_json::value::RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut m: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = m.next_entry::<String, &'de serde_json::value::RawValue>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let fields = de
        .deserialize_map(Fields)
        .map_err(|_| "expected a JSON object".to_string())?;
    let mut obj = Map::new();
    for (k, v) in fields {
        let text = v.get().trim();
        let value = if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            Value::String(text.to_string())
        } else {
            serde_json::from_str(text).map_err(|e| format!("field `{k}`: {e}"))?
        };
        if obj.insert(k.clone(), value).is_some() {
            return Err(format!("key `{k}` appears twice"));
        }
    }
    Ok(obj)
}

fn read_jsonl(text: &str, origin: &str) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{origin}:{}", i + 1);
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(line).with_context(|| format!("{at}: invalid JSON"))?;
        let obj = exact_object(raw).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        out.push(Record { at, obj });
    }
    Ok(out)
}

/// A JSON array of objects (a `datasets` `to_json(lines=False)` export, or hand-written).
fn read_json_array(text: &str, origin: &str) -> Result<Vec<Record>> {
    let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            anyhow::anyhow!("{origin}: expected a JSON array of objects")
        } else {
            anyhow::anyhow!("{origin}:{}:{}: invalid JSON ({e})", e.line(), e.column())
        }
    })?;
    // Each element's line, for messages: the line of its opening brace.
    let mut lines = Vec::with_capacity(items.len());
    let (mut depth, mut line, mut in_str, mut esc) = (0usize, 1usize, false, false);
    for c in text.chars() {
        match c {
            '\n' => line += 1,
            _ if in_str => match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            },
            '"' => in_str = true,
            '{' | '[' => {
                if depth == 1 && c == '{' {
                    lines.push(line);
                }
                depth += 1;
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    items
        .into_iter()
        .enumerate()
        .map(|(k, v)| {
            let at = match lines.get(k) {
                Some(l) => format!("{origin}:{l}"),
                None => format!("{origin}: element {k}"),
            };
            match exact_object(v) {
                Ok(obj) => Ok(Record { at, obj }),
                Err(e) if e == "expected a JSON object" => {
                    let text: String = v.get().chars().take(80).collect();
                    bail!("{at}: element {k} is not a JSON object: {text}")
                }
                Err(e) => bail!("{at}: {e}"),
            }
        })
        .collect()
}

fn read_csv(text: &str, origin: &str) -> Result<Vec<Record>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .with_context(|| format!("{origin}:1: cannot read the CSV header"))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    for (k, h) in headers.iter().enumerate() {
        if headers[..k].contains(h) {
            bail!("{origin}:1: column `{h}` appears twice in the CSV header");
        }
    }
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{origin}: malformed CSV"))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let obj: Map<String, Value> = headers
            .iter()
            .zip(record.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
            .collect();
        out.push(Record {
            at: format!("{origin}:{line}"),
            obj,
        });
    }
    Ok(out)
}

/// A Parquet file's rows (the flat string / integer / float columns of a `datasets` export;
/// nested columns come through as JSON).
fn read_parquet(path: &Path, origin: &str) -> Result<Vec<Record>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read dataset {origin}"))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| anyhow::anyhow!("{origin}: not a readable Parquet file: {e}"))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| anyhow::anyhow!("{origin}: cannot read its rows: {e}"))?;
    let mut out = Vec::new();
    for (k, row) in rows.enumerate() {
        let at = format!("{origin}: row {}", k + 1);
        let row = row.map_err(|e| {
            let e = e.to_string();
            if e.contains("Disabled feature") {
                anyhow::anyhow!("{at}: {e}: this build reads uncompressed, Snappy and Zstandard Parquet (pyarrow's and `datasets`' defaults); rewrite the file with one of those")
            } else {
                anyhow::anyhow!("{at}: {e}")
            }
        })?;
        let obj: Map<String, Value> = row
            .get_column_iter()
            .map(|(name, field)| (name.clone(), field_json(field)))
            .collect();
        out.push(Record { at, obj });
    }
    Ok(out)
}

/// A Parquet value as JSON, as written in its column's type: strings as such, integers
/// exactly, floats as the shortest decimal that round-trips in their own width (float32 `0.1`
/// is `"0.1"`, float64 `1e20` is `"100000000000000000000"`); lists, maps, structs and
/// non-UTF-8 bytes as JSON arrays and objects, which a text field then refuses (as it does for
/// JSON files), naming the file, row and field.
fn field_json(f: &parquet::record::Field) -> Value {
    use parquet::record::Field as F;
    match f {
        F::Null => Value::Null,
        F::Bool(b) => Value::Bool(*b),
        F::Str(s) => Value::String(s.clone()),
        F::Byte(v) => Value::from(*v),
        F::Short(v) => Value::from(*v),
        F::Int(v) => Value::from(*v),
        F::Long(v) => Value::from(*v),
        F::UByte(v) => Value::from(*v),
        F::UShort(v) => Value::from(*v),
        F::UInt(v) => Value::from(*v),
        F::ULong(v) => Value::from(*v),
        F::Float16(v) => Value::String(v.to_string()),
        F::Float(v) => Value::String(v.to_string()),
        F::Double(v) => Value::String(v.to_string()),
        F::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Array(b.data().iter().map(|x| Value::from(*x)).collect()),
        },
        F::ListInternal(l) => Value::Array(l.elements().iter().map(field_json).collect()),
        F::MapInternal(m) => Value::Object(
            m.entries()
                .iter()
                .map(|(k, v)| (k.to_string(), field_json(v)))
                .collect(),
        ),
        F::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), field_json(v)))
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}
