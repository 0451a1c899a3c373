#!/usr/bin/env python3
"""Compare the keys `cranium diff` and reladiff report with the expected ones (scripts/bench/validate.sh).

    keys.py --cranium REPORT --cranium-exit RC --reladiff JSONL --expected KEYS [--nkeys 1]

REPORT: cranium's stdout with --format json; its last non-empty line is the report object
    {"equal":…,"missing_in_target":[[k…]…],"only_in_target":[…],"differing":[{"key":[k…],…}…],
     "duplicate_keys_in_target":[…],"differences":N,…}
  cranium's key set = the keys of all four lists.
JSONL: reladiff's --json output, one json.dumps([sign, [key…, other columns…]]) per line; its key set = the first
  NKEYS values of every line ("-" and "+" lines of a changed row give the same key).
KEYS: the expected keys, one "<what>\t<key>" line each (empty file = no difference expected).

Prints a summary on stderr and `true` or `false` on stdout: whether cranium's key set == reladiff's == the expected.
Exits 1 (nothing on stdout) when a report cannot be read or cranium's report contradicts itself (exit status,
"equal" and the key lists must agree: exit 0 and equal=true with no keys, exit 1 and equal=false with keys).
"""
import argparse
import json
import sys


def fail(msg):
    print(f"keys.py: {msg}", file=sys.stderr)
    sys.exit(1)


def show(keys, limit=12):
    shown = [",".join(k) for k in sorted(keys, key=sort_key)[:limit]]
    return " ".join(shown) + (f" … (+{len(keys) - limit})" if len(keys) > limit else "")


def sort_key(k):
    return tuple((0, int(v), "") if v.lstrip("-").isdigit() else (1, 0, v) for v in k)


def cranium_keys(path, rc):
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        fail(f"{path}: cranium printed nothing on stdout")
    try:
        rep = json.loads(lines[-1])
        keys, count = set(), 0
        for field in ("missing_in_target", "only_in_target", "duplicate_keys_in_target"):
            for k in rep[field]:
                keys.add(tuple(str(v) for v in k))
                count += 1
        for d in rep["differing"]:
            keys.add(tuple(str(v) for v in d["key"]))
            count += 1
        equal = rep["equal"]
    except (ValueError, KeyError, TypeError) as e:
        fail(f"{path}: not a cranium diff report ({type(e).__name__}: {e}): {lines[-1][:300]!r}")
    if equal is not (count == 0) or rc != (0 if equal else 1):
        fail(f"cranium's report contradicts itself: exit {rc}, equal={json.dumps(equal)}, {count} listed keys")
    info = ", ".join(f"{f}={json.dumps(rep.get(f))}" for f in
                     ("differences", "source_rows", "target_rows", "seconds", "source_bytes", "target_bytes"))
    lists = ", ".join(f"{f}: {len(rep[f])}" for f in
                      ("missing_in_target", "only_in_target", "differing", "duplicate_keys_in_target"))
    return keys, f"exit {rc}, {info}; {lists}"


def reladiff_keys(path, nkeys):
    keys, signs = set(), {"-": 0, "+": 0}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                sign, values = json.loads(line)
                signs[sign] += 1
            except (ValueError, KeyError, TypeError) as e:
                fail(f"{path}:{n}: not a reladiff --json line ({e}): {line[:300]!r}")
            keys.add(tuple("" if v is None else str(v) for v in values[:nkeys]))
    return keys, f"{signs['-']} '-' rows (MySQL side), {signs['+']} '+' rows (PostgreSQL side)"


def expected_keys(path, nkeys):
    keys = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                keys.add(tuple(line.rstrip("\n").split("\t")[1:][:nkeys]))
    return keys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cranium", required=True)
    ap.add_argument("--cranium-exit", type=int, required=True)
    ap.add_argument("--reladiff", required=True)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--nkeys", type=int, default=1)
    a = ap.parse_args()
    want = expected_keys(a.expected, a.nkeys)
    got_c, info_c = cranium_keys(a.cranium, a.cranium_exit)
    got_r, info_r = reladiff_keys(a.reladiff, a.nkeys)
    print(f"  expected: {len(want)} keys", file=sys.stderr)
    ok = True
    for name, got, info in (("cranium", got_c, info_c), ("reladiff", got_r, info_r)):
        print(f"  {name}: {len(got)} keys ({info})", file=sys.stderr)
        if got != want:
            ok = False
            if want - got:
                print(f"    not reported: {show(want - got)}", file=sys.stderr)
            if got - want:
                print(f"    not expected: {show(got - want)}", file=sys.stderr)
    print("true" if ok else "false")


if __name__ == "__main__":
    main()
