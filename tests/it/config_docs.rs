//! `configs/README.md` lists every key of every section with the code's default: each key of
//! the default config has a row under its section, whose default cell is the value `cures check`
//! prints; each row names a key the code has (keys that default to "unset" show `—` or a rule).

use std::collections::BTreeMap;

/// section ("" = top level) → key → default cell, from the README's "### [section]" tables.
fn documented() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/README.md"))
        .expect("configs/README.md");
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            section = if h.trim() == "top level" {
                Some(String::new())
            } else {
                h.strip_prefix('[')
                    .and_then(|s| s.split(']').next())
                    .filter(|s| !s.starts_with('['))
                    .map(str::to_string)
            };
            continue;
        }
        let Some(sec) = &section else { continue };
        let cells: Vec<&str> = line.split(" | ").collect();
        if cells.len() < 3 || !line.starts_with("| `") {
            continue;
        }
        let key = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_string();
        let default = cells[1].trim().replace("\\|", "|");
        out.entry(sec.clone()).or_default().insert(key, default);
    }
    out
}

/// section → key → TOML value of the default config.
fn code() -> BTreeMap<String, BTreeMap<String, String>> {
    let v = toml::Value::try_from(cures::config::Config::default()).expect("serialise");
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let toml::Value::Table(top) = v else {
        panic!("not a table")
    };
    for (k, v) in top {
        match v {
            toml::Value::Table(t) => {
                out.entry(String::new())
                    .or_default()
                    .insert(k.clone(), "section".into());
                for (kk, vv) in t {
                    let cell = match vv {
                        toml::Value::Table(_) => "section".to_string(),
                        other => format!("`{other}`"),
                    };
                    out.entry(k.clone()).or_default().insert(kk, cell);
                }
            }
            other => {
                out.entry(String::new())
                    .or_default()
                    .insert(k, format!("`{other}`"));
            }
        }
    }
    out
}

/// Equal cells: the same text, the same number written two ways (`1e-06` = `0.000001`), or an
/// array of tables described in words ("see below").
fn same(doc: &str, code: &str) -> bool {
    let num = |s: &str| s.trim_matches('`').parse::<f64>().ok();
    doc == code
        || matches!((num(doc), num(code)), (Some(a), Some(b)) if a == b)
        || (code.starts_with("`[{") && !doc.starts_with('`'))
}

#[test]
fn configs_readme_lists_every_key_with_the_codes_default() {
    let (doc, code) = (documented(), code());
    let mut problems = Vec::new();
    for (sec, keys) in &code {
        for (k, want) in keys {
            let name = if sec.is_empty() {
                k.clone()
            } else {
                format!("{sec}.{k}")
            };
            match doc.get(sec).and_then(|d| d.get(k)) {
                None => problems.push(format!("{name}: not in configs/README.md (default {want})")),
                Some(got) if !same(got, want) => {
                    problems.push(format!("{name}: README says {got}, the code {want}"))
                }
                Some(_) => {}
            }
        }
    }
    for (sec, keys) in &doc {
        for (k, got) in keys {
            let known = code.get(sec).is_some_and(|c| c.contains_key(k));
            // Keys unset by default are absent from the serialised defaults: their cell must
            // then not look like a value.
            if !known && got.starts_with('`') {
                problems.push(format!(
                    "[{sec}] {k}: documented as {got}, but the code has no such key set by default"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
