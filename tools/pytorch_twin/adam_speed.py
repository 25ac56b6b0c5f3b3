#!/usr/bin/env python3
"""Times one torch.optim.Adam step over the default preset's G + R parameters (~62M), for the
single-tensor (foreach=False, the CPU default), foreach and fused=True paths, with random
gradients: the PyTorch side of `cargo run --release -p model --example adam_speed`.

Run: /work/pyref/bin/python tools/pytorch_twin/adam_speed.py [--threads 2] [--steps 5]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import reggan_twin as twin  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g, r, _ = twin.build(twin.preset("default"))
    params = list(g.parameters()) + list(r.parameters())
    n = sum(p.numel() for p in params)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    print(f"Adam over {len(params)} tensors, {n / 1e6:.1f}M parameters, {args.threads} threads, "
          f"median of {args.steps} steps")
    for name, variant in [("fused", dict(fused=True)), ("foreach", dict(foreach=True)),
                          ("single-tensor", dict(foreach=False))]:
        opt = torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.999), **variant)
        opt.step()  # warm-up
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        print(f"{name}: median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})")


if __name__ == "__main__":
    main()
