//! Every reference resolves: a new user must be able to follow every path that the README,
//! `docs/`, `configs/`, `scripts/` and the Rust sources (`src/`, `tests/`, `build.rs`) mention,
//! in a fresh clone and nothing else. All paths in this repository are written from its root.
//!
//! - Each token that starts with a top-level folder (`docs/`, `configs/`, `scripts/`, `src/`,
//!   `tests/`, `assets/`, `results/`, `.ci/`, also after `./`) right after the start of a line,
//!   a space, a quote, a backtick, `(`, `[`, `=` or `,` (so not inside a URL or a longer path)
//!   must exist. Patterns (`{a,b}`, `*`, `<run>`, `$VAR`) and the outputs that commands write
//!   under `results/` at run time are not checked.
//! - No file may point outside the repository: a sibling `../shared` checkout, or an absolute
//!   path of the machine it was written on.
//!
//! All problems are listed at once, one `file:line: ...` per line.

use std::path::Path;

/// The repository's top-level folders a mention starts with.
const PREFIXES: [&str; 8] = [
    "docs/", "configs/", "scripts/", "src/", "tests/", "assets/", "results/", ".ci/",
];

/// What commands write under `results/` (git-ignored, or the default of an `--out`): a mention
/// of one of these need not exist in a clone.
const OUTPUTS: [&str; 9] = [
    "results/runs",
    "results/study2",
    "results/init",
    "results/study/runs",
    "results/sim",
    "results/bench",
    "results/eval",
    "results/plots",
    "results/testbed",
];

/// This file: it names the patterns it looks for, so it is not scanned.
const THIS: &str = "tests/it/repo_refs.rs";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files under `dir` (relative to the root, `/`-separated), recursively; only `.rs` files
/// when `rust_only`.
fn walk(dir: &str, rust_only: bool, out: &mut Vec<String>) {
    let mut stack = vec![root().join(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.expect("directory entry").path();
            if p.is_dir() {
                if !p.ends_with("__pycache__") {
                    stack.push(p);
                }
            } else if !rust_only || p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root()).expect("under the root");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}

/// The repository paths `line` mentions that can be checked (patterns left out).
fn mentions(line: &str) -> Vec<&str> {
    let b = line.as_bytes();
    let is_path = |c: u8| c.is_ascii_alphanumeric() || b"_./{}*-".contains(&c);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if i > 0 && !b" \t`\"'([=,".contains(&b[i - 1]) {
            i += 1;
            continue;
        }
        let s = if b[i..].starts_with(b"./") { i + 2 } else { i };
        if !PREFIXES.iter().any(|p| b[s..].starts_with(p.as_bytes())) {
            i += 1;
            continue;
        }
        let mut e = s;
        while e < b.len() && is_path(b[e]) {
            e += 1;
        }
        // ASCII from `s` to `e`, so these are char boundaries.
        let token = line[s..e].trim_end_matches(&['.', ',', ':', '-'][..]);
        let pattern =
            token.contains(&['{', '*'][..]) || matches!(b.get(e).copied(), Some(b'<' | b'$'));
        if !pattern {
            out.push(token);
        }
        i = e;
    }
    out
}

#[test]
fn mentions_finds_paths_and_skips_urls_and_patterns() {
    let line = "see `docs/a.md`, ./scripts/b.sh: (src/c/) https://x.org/src/d \
                results/{a,b}-s0 results/<run>/x tests/it/*.rs foo/tests/e.rs";
    assert_eq!(mentions(line), ["docs/a.md", "scripts/b.sh", "src/c/"]);
}

#[test]
fn every_reference_resolves() {
    let mut files = vec!["README.md".to_string(), "build.rs".to_string()];
    for dir in ["docs", "configs", "scripts"] {
        walk(dir, false, &mut files);
    }
    for dir in ["src", "tests"] {
        walk(dir, true, &mut files);
    }
    files.retain(|f| f != THIS);
    files.sort();
    // Built from pieces so that no file, this one included, spells them out by accident.
    let outside = [
        concat!("..", "/shared"),
        concat!("/", "work/"),
        concat!("/", "root/"),
    ];
    let (mut bad, mut checked) = (Vec::new(), 0usize);
    for file in &files {
        let bytes = std::fs::read(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let Ok(text) = String::from_utf8(bytes) else {
            continue; // not text
        };
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            for pat in outside.iter().filter(|p| line.contains(*p)) {
                bad.push(format!("{file}:{n}: `{pat}` is outside the repository"));
            }
            for path in mentions(line) {
                checked += 1;
                let output = OUTPUTS
                    .iter()
                    .any(|o| path == *o || path.starts_with(&format!("{o}/")));
                if !output && !root().join(path).exists() {
                    bad.push(format!("{file}:{n}: {path}"));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} mentions found: is the scanner broken?"
    );
    assert!(
        bad.is_empty(),
        "{} dead or outside references (a fresh clone has only the repository; paths are from \
         its root):\n{}",
        bad.len(),
        bad.join("\n")
    );
}
