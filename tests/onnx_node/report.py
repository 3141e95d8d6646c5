"""Summarise Walle's results on the ONNX node test cases, optionally next to onnxruntime's.

    python tests/onnx_node/report.py                 # counts by status and reason
    python tests/onnx_node/report.py --ort           # plus "Walle X / onnxruntime Y"
    python tests/onnx_node/report.py -k gather -v    # only matching cases, with details
    python tests/onnx_node/report.py --write-known   # refresh known_failures.txt
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import node_cases as nc

KNOWN = Path(__file__).resolve().parent / "known_failures.txt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backend", default="reference", help="Walle backend (default: reference)")
    ap.add_argument("--ort", action="store_true", help="also run onnxruntime on the same cases")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every failing case")
    ap.add_argument("--json", type=Path, help="write per-case results here")
    ap.add_argument("--write-known", action="store_true",
                    help=f"rewrite {KNOWN.name} with the current failures")
    args = ap.parse_args(argv)

    cases = [c for c in nc.load_cases() if args.k in c.name]
    t0 = time.perf_counter()
    walle = {c.name: nc.evaluate(c, lambda c: nc.run_walle(c, args.backend)) for c in cases}
    elapsed = time.perf_counter() - t0
    counts = collections.Counter(o.status for o in walle.values())
    print(f"Walle ({args.backend}) on {len(cases)} ONNX node cases in {elapsed:.1f}s: "
          f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")

    for status in ("skip", "fail"):
        by_reason = collections.Counter(o.reason for o in walle.values() if o.status == status)
        if by_reason:
            print(f"\n{status} reasons:")
            for reason, n in by_reason.most_common():
                print(f"  {n:5d}  {reason}")
    if args.verbose:
        print("\nfailing cases:")
        for name, o in walle.items():
            if o.status == "fail":
                print(f"  {name}: {o.reason}\n      {o.detail.strip().splitlines()[-1][:300]}")

    if args.ort:
        ort = {c.name: nc.evaluate(c, nc.run_onnxruntime) for c in cases}
        ort_pass = sum(o.status == "pass" for o in ort.values())
        print(f"\nWalle {counts['pass']} / onnxruntime {ort_pass} (of {len(cases)} cases)")
        both = collections.Counter(
            (walle[n].status == "pass", ort[n].status == "pass") for n in walle)
        print(f"  both pass {both[(True, True)]}, only Walle {both[(True, False)]}, "
              f"only onnxruntime {both[(False, True)]}, neither {both[(False, False)]}")
        only_ort = collections.Counter(
            walle[n].reason for n in walle if ort[n].status == "pass" and walle[n].status != "pass")
        print("  cases onnxruntime passes and Walle does not, by Walle's reason:")
        for reason, n in only_ort.most_common(25):
            print(f"    {n:5d}  {reason}")

    if args.json:
        args.json.write_text(json.dumps(
            {n: {"status": o.status, "reason": o.reason, "detail": o.detail} for n, o in walle.items()},
            indent=1))
    if args.write_known:
        lines = [f"{n}  # {o.reason}" for n, o in sorted(walle.items()) if o.status == "fail"]
        header = ("# ONNX node cases that fail on the reference backend for a known reason.\n"
                  "# tests/test_onnx_node.py marks them strict xfail: fix one, delete its line.\n"
                  "# Regenerate: python tests/onnx_node/report.py --write-known\n")
        KNOWN.write_text(header + "".join(line + "\n" for line in lines))
        print(f"\nwrote {len(lines)} known failures to {KNOWN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
