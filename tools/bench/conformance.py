"""ONNX conformance node cases through the ONNX->torch interpreter: what passes, what is unsupported, what is wrong.

    python -m onnx_amp.tools.bench.conformance [--out conformance.md] [--fallback] [--cases REGEX]

Prints the totals (cases, out of scope, in scope, passed, unsupported by op, wrong by op, op types
passing every case) and writes them as a markdown table with ``--out``. The cases are the ones the
installed onnx wheel generates (``onnx.backend.test.case.node``); scope and comparison rules are
:mod:`onnx_amp.runtime.conformance` (``tests/test_conformance.py`` asserts the same numbers).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter


def _by_op(counter: Counter) -> str:
    return ", ".join(f"{op} {n}" for op, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def _lines(s, seconds: float, fallback: bool) -> list[tuple[str, str]]:
    st = s.by_status
    rate = f"{st['pass'] / s.in_scope:.1%}" if s.in_scope else "n/a"
    reasons = Counter(r.detail for r in s.results if r.status == "out_of_scope")
    all_pass = s.ops_all_pass()
    return [
        ("cases", str(len(s.results))),
        ("out of scope", f"{st['out_of_scope']} ({'; '.join(f'{n}: {why}' for why, n in reasons.most_common())})"),
        ("in scope", str(s.in_scope)),
        ("passed", f"{st['pass']} ({rate} of in scope)"),
        ("unsupported", f"{st['unsupported']} ({_by_op(s.ops('unsupported'))})"),
        ("wrong", f"{st['wrong']} ({_by_op(s.ops('wrong'))})"),
        ("op types passing every case", f"{len(all_pass)} of {len(s.op_types())}"),
        ("fallback mode", "on" if fallback else "off"),
        ("seconds", f"{seconds:.1f}"),
    ]


def _markdown(lines, s) -> str:
    out = ["| measure | value |", "| --- | --- |"]
    out += [f"| {k} | {v.replace('|', '/')} |" for k, v in lines]
    bad = [r for r in s.results if r.status in ("wrong", "unsupported")]
    if bad:
        out += ["", "| case | op | status | detail |", "| --- | --- | --- | --- |"]
        out += [f"| {r.name} | {r.op} | {r.status} | {r.detail.replace('|', '/')[:200]} |" for r in bad]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write a markdown table here")
    ap.add_argument("--fallback", action="store_true", help="run TorchGraph(model, fallback=True)")
    ap.add_argument("--cases", default=None, help="only the cases whose name or op matches this regex")
    ap.add_argument("--list", action="store_true", help="also print every unsupported / wrong case")
    args = ap.parse_args(argv)

    from onnx_amp.runtime import conformance as C

    t0 = time.perf_counter()
    cases = C.load_cases()
    if args.cases:
        pat = re.compile(args.cases)
        ops = C.case_ops(cases)
        cases = [c for c in cases if pat.search(c.name) or pat.search(ops[c.name])]
    s = C.run_cases(cases, fallback=args.fallback)
    lines = _lines(s, time.perf_counter() - t0, args.fallback)
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    if args.list:
        for r in s.results:
            if r.status in ("wrong", "unsupported"):
                print(f"  {r.status:<11} {r.name} ({r.op}): {r.detail}")
    if args.out:
        with open(args.out, "w") as f:
            f.write(_markdown(lines, s))
        print(f"wrote {args.out}")
    return 0 if s.by_status["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
