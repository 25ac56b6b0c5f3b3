#!/usr/bin/env python3
"""Times the data-parallel gradient all-reduce of a preset's networks with torch.distributed on
the Gloo backend, as ncct2ctpa does it (crates/train/src/distributed.rs): the G+R gradients,
then D's, flattened into consecutive buckets of at most 25 MB (torch DDP's bucket_cap_mb),
every bucket all-reduced at once (async_op=True, then wait), divided by the world size and
copied back; then the step's small loss vector. Both ranks are lined up by a barrier before
each step. The PyTorch side of `crates/train/examples/allreduce_speed.rs`.

Run (one process per rank): torchrun --nproc-per-node 2 tools/pytorch_twin/allreduce_speed.py
[--preset default] [--steps 10]; `tools/dist/bench.sh` runs both sides.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
import reggan_twin as twin  # noqa: E402

BUCKET_BYTES = 25 * 1024 * 1024


def buckets(grads):
    out, size = [], 0
    for g in grads:
        b = g.numel() * g.element_size()
        if out and out[-1][0].dtype == g.dtype and size + b <= BUCKET_BYTES:
            out[-1].append(g)
            size += b
        else:
            out.append([g])
            size = b
    return out


def average(grads, world):
    groups = buckets(grads)
    flats = [torch.cat([g.reshape(-1) for g in grp]) for grp in groups]
    works = [dist.all_reduce(f, async_op=True) for f in flats]
    for w in works:
        w.wait()
    for grp, flat in zip(groups, flats):
        flat.div_(world)
        offset = 0
        for g in grp:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default", choices=sorted(twin.PRESETS))
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g, r, d = twin.build(twin.preset(args.preset))
    gr = [p for p in list(g.parameters()) + list(r.parameters())]
    dp = list(d.parameters())
    for p in gr + dp:
        p.grad = torch.full_like(p, rank + 1.0)
    times = []
    with torch.no_grad():
        for step in range(args.steps + 1):
            dist.barrier()
            t = time.perf_counter()
            average([p.grad for p in gr], world)
            average([p.grad for p in dp], world)
            dist.all_reduce(torch.ones(12, dtype=torch.float64))
            if step > 0:
                times.append((time.perf_counter() - t) * 1e3)
    want = (world + 1) / 2
    assert abs(gr[0].grad.flatten()[0].item() - want) < 1e-6
    times.sort()
    if rank == 0:
        n = sum(p.numel() for p in gr + dp)
        print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "preset": args.preset,
                          "world": world, "params": n, "median_ms": round(times[len(times) // 2], 2),
                          "min_ms": round(times[0], 2), "steps": args.steps}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
