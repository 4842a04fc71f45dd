#!/usr/bin/env bash
# The verifier before and after a change, side by side in one run: peer-suite agreement
# (tests/data/math_verify/, strict and --lenient) and `cures bench reward` verifications/s of
# each binary, then Math-Verify's on the same pairs where its venv exists.
#
#   bash scripts/bench/reward-compare.sh OLD_CURES NEW_CURES [PAIRS]
#
# Build OLD_CURES from the commit before the change, e.g.
#   git worktree add /tmp/old HEAD~1 && (cd /tmp/old && cargo build --release --bin cures)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OLD=${1:?usage: reward-compare.sh OLD_CURES NEW_CURES [PAIRS]}
NEW=${2:?usage: reward-compare.sh OLD_CURES NEW_CURES [PAIRS]}
PAIRS=${3:-10000}
CASES=tests/data/math_verify/math_verify_cases.jsonl
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

agreement() { # binary, mode ("" or --lenient)
  rm -f "$TMP/out.jsonl"
  "$1" reward score --input "$CASES" --output "$TMP/out.jsonl" --quiet $2 2>"$TMP/err" ||
    { echo "reward-compare: $1 reward score failed: $(cat "$TMP/err")" >&2; return 1; }
  python3 - "$CASES" "$TMP/out.jsonl" <<'EOF'
import json, sys
want = [json.loads(l)["equivalent"] for l in open(sys.argv[1]) if l.strip()]
got = [json.loads(l)["equivalent"] for l in open(sys.argv[2]) if l.strip()]
assert len(want) == len(got), (len(want), len(got))
a = sum(w == g for w, g in zip(want, got))
print(f"{a}/{len(want)} = {100 * a / len(want):.2f}%")
EOF
}

per_s() { # binary, extra flags
  "$1" bench reward --pairs "$PAIRS" --json $2 2>/dev/null | tail -1 |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["cures_per_s"], r.get("math_verify_per_s"))'
}

for mode in "" --lenient; do
  before=$(agreement "$OLD" "$mode")
  after=$(agreement "$NEW" "$mode")
  echo "peer suite ${mode:-strict}: before $before, after $after"
done
read -r old_s _ < <(per_s "$OLD" --no-reference)
read -r new_s mv_s < <(per_s "$NEW" "")
python3 - "$old_s" "$new_s" "$mv_s" <<'EOF'
import sys
old, new, mv = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print(f"verifications/s (one thread): before {old:.0f}, after {new:.0f} ({new / old:.3f}x)")
if mv not in ("None", "null"):
    print(f"Math-Verify on the same pairs: {float(mv):.0f}/s (after / Math-Verify {new / float(mv):.1f}x)")
EOF
