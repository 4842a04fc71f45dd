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

fn read_jsonl(text: &str, origin: &str) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{origin}:{}", i + 1);
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("{at}: invalid JSON"))?;
        let Value::Object(obj) = value else {
            bail!("{at}: expected a JSON object");
        };
        out.push(Record { at, obj });
    }
    Ok(out)
}

/// A JSON array of objects (a `datasets` `to_json(lines=False)` export, or hand-written).
fn read_json_array(text: &str, origin: &str) -> Result<Vec<Record>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("{origin}:{}:{}: invalid JSON ({e})", e.line(), e.column()))?;
    let Value::Array(items) = value else {
        bail!("{origin}: expected a JSON array of objects");
    };
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
            match v {
                Value::Object(obj) => Ok(Record { at, obj }),
                other => bail!(
                    "{at}: element {k} is not a JSON object: {}",
                    super::short(&other)
                ),
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

/// A Parquet value as JSON: strings, integers and floats as such; anything else (lists,
/// structs, dates) as its text, which the text fields then see.
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
        F::Float(v) => {
            serde_json::Number::from_f64(f64::from(*v)).map_or(Value::Null, Value::Number)
        }
        F::Double(v) => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
        F::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(f.to_string()),
        },
        other => Value::String(other.to_string()),
    }
}
