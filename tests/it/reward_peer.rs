//! The peer suite: 262 answer-equivalence cases from Math-Verify's tests
//! (`tests/data/math_verify/math_verify_cases.jsonl`, see its README). We run them with every
//! extraction fallback on (Math-Verify extracts from both sides with its default targets),
//! print the agreement overall and per category, require >= 95 %, and require the
//! disagreements to be exactly those listed (with reasons) in
//! `tests/data/reward_disagreements.tsv`, so the list cannot rot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cures::reward::{score, RewardConfig};

fn cases_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/math_verify/math_verify_cases.jsonl")
}

#[test]
fn math_verify_peer_suite() {
    let _serial = crate::support::serial();
    let path = cases_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the peer suite {} is missing ({e}): it is required (see \
             tests/data/math_verify/README.md), this test does not skip",
            path.display()
        )
    });
    let cfg = RewardConfig::lenient();
    let mut per_cat: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut observed: BTreeSet<(String, bool, bool)> = BTreeSet::new();
    let (mut n, mut agree) = (0usize, 0usize);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
        let field = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("{}:{}: no string `{k}`", path.display(), i + 1))
                .to_string()
        };
        let expected = v["equivalent"]
            .as_bool()
            .unwrap_or_else(|| panic!("{}:{}: no bool `equivalent`", path.display(), i + 1));
        let got = score(&field("prediction"), &field("gold"), &cfg).equivalent;
        n += 1;
        let c = per_cat.entry(field("category")).or_default();
        c.1 += 1;
        if got == expected {
            agree += 1;
            c.0 += 1;
        } else {
            observed.insert((field("id"), expected, got));
        }
    }
    assert_eq!(n, 262, "the peer suite should hold 262 cases");
    println!(
        "peer suite agreement: {agree}/{n} = {:.2}%",
        100.0 * agree as f64 / n as f64
    );
    for (cat, (a, t)) in &per_cat {
        println!(
            "  {cat:<36} {a:>3}/{t:<3} {:6.1}%",
            100.0 * *a as f64 / *t as f64
        );
    }
    let list_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reward_disagreements.tsv");
    let list = std::fs::read_to_string(&list_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", list_path.display()));
    let mut listed = BTreeSet::new();
    for (i, l) in list
        .lines()
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(
            f.len(),
            4,
            "{}:{}: want id, expected, ours, reason",
            list_path.display(),
            i + 1
        );
        assert!(
            !f[3].trim().is_empty(),
            "{}:{}: empty reason",
            list_path.display(),
            i + 1
        );
        listed.insert((f[0].to_string(), f[1] == "true", f[2] == "true"));
    }
    for d in &observed {
        println!("  disagreement: {} expected {} ours {}", d.0, d.1, d.2);
    }
    assert_eq!(
        observed,
        listed,
        "observed disagreements differ from {}",
        list_path.display()
    );
    assert!(agree * 100 >= 95 * n, "agreement {agree}/{n} is below 95%");
}
