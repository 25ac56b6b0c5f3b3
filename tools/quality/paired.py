#!/usr/bin/env python3
"""Two arms of the quality benchmark compared seed by seed.

A seed fixes G's, R's and D's initial weights and the order of the training crops, so seed N
of arm A and seed N of arm B differ only by what the arms change: the per-seed difference
removes the part of the spread the seeds share. Prints, for the body, lung and artery MAE and
the trunk's mean HU, each arm's mean ± sd over the seeds, and the mean ± sd of B - A with a
paired t statistic (|t| above 2.26 is p < 0.05 two-sided at 10 seeds, 2.78 at 5).

usage: tools/quality/paired.py [-o OUT] [-t TILE] [-n SEEDS] ARM_A ARM_B
  -o  the benchmark's output folder (default runs/quality)
  -t  score the predictions on tiles of TILE (OUT/ARM/seed-N/tile-TILE), as benchmark.sh -t
  -n  seeds 1..N (default: every seed both arms have)
Standard library only.
"""
import argparse
import json
import math
import os
import statistics
import sys

ROWS = [("body", "mae", "body MAE"), ("lung", "mae", "lung MAE"),
        ("vessel", "mae", "artery MAE"), ("trunk", "me", "trunk mean HU")]


def scores(path):
    try:
        s = json.load(open(path))
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: {e}")
    by = {(r["region"], r["metric"]): r for r in s["summary"]}
    out = []
    for region, metric, name in ROWS:
        r = by.get((region, metric))
        if r is None:
            sys.exit(f"{path}: no {region} {metric} (was it scored with the trunk mask?)")
        v = r["model"]["mean"]
        # a mean error plus the truth's mean is the image's mean
        out.append(v + r["target_mean"]["mean"] if metric == "me" else v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", default="runs/quality")
    ap.add_argument("-t", default="")
    ap.add_argument("-n", type=int, default=0)
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    sub = f"tile-{args.t}/eval/evaluation.json" if args.t else "eval/evaluation.json"

    def path(arm, seed):
        return os.path.join(args.o, arm, f"seed-{seed}", sub)

    seeds = []
    n = 1
    while (args.n == 0 or n <= args.n) and os.path.isfile(path(args.a, n)) \
            and os.path.isfile(path(args.b, n)):
        seeds.append(n)
        n += 1
    if args.n and len(seeds) < args.n:
        sys.exit(f"seed {len(seeds) + 1}: missing {path(args.a, len(seeds) + 1)} "
                 f"or {path(args.b, len(seeds) + 1)}")
    if len(seeds) < 2:
        sys.exit(f"need two seeds both arms have under {args.o}, found {len(seeds)}")
    a = [scores(path(args.a, s)) for s in seeds]
    b = [scores(path(args.b, s)) for s in seeds]
    where = f", tiles {args.t}" if args.t else ""
    print(f"{len(seeds)} seeds{where}: {args.a} (A) against {args.b} (B)")
    print(f"| | A | B | B - A | paired t |\n|---|---|---|---|---|")
    for i, (_, _, name) in enumerate(ROWS):
        xa, xb = [r[i] for r in a], [r[i] for r in b]
        d = [y - x for x, y in zip(xa, xb)]
        sd = statistics.stdev(d)
        t = statistics.fmean(d) / (sd / math.sqrt(len(d))) if sd > 0 else float("inf")
        fmt = lambda xs: f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs):.1f}"
        print(f"| {name} | {fmt(xa)} | {fmt(xb)} | {fmt(d)} | {t:+.2f} |")


if __name__ == "__main__":
    main()
