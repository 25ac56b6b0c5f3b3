#!/usr/bin/env python3
"""Golden FLOP counts for crates/model/src/flops.rs, counted by
torch.utils.flop_counter.FlopCounterMode on the PyTorch twin (tools/pytorch_twin).

For the `tiny` and `default` presets at 64x64, batch 2, and for `tiny` and `default` with R's
bottleneck self-attention (`registration.attention`, cases `*_attention`): the forward FLOPs of
G, R and D (training mode) and of one whole training step (forward + backward, the step of
tools/pytorch_twin/bench.py, which is train::step::train_step's).

Writes crates/model/tests/data/flops_torch.json.
Run: /work/pyref/bin/python tools/golden/flops_torch.py   (deterministic, CPU, a few seconds)
"""

import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "pytorch_twin"))
import bench  # noqa: E402
import reggan_twin as twin  # noqa: E402

OUT = ROOT / "crates" / "model" / "tests" / "data" / "flops_torch.json"
SIZE, BATCH = 64, 2


def count(fn) -> int:
    with FlopCounterMode(display=False) as c:
        fn()
    return int(c.get_total_flops())


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cases = {}
    for name, attention in (("tiny", False), ("default", False), ("tiny", True), ("default", True)):
        cfg = twin.preset(name)
        cfg["registration"]["attention"] = attention
        step = bench.Step(cfg, None)
        x, y, lung = bench.synthetic_batch(BATCH, SIZE)
        with torch.no_grad():
            g = count(lambda: step.g(x))
            r = count(lambda: step.r(x, y))
            d = count(lambda: step.d(x))
        cases[name + ("_attention" if attention else "")] = {
            "preset": name,
            "registration_attention": attention,
            "size": SIZE,
            "batch": BATCH,
            "g_forward": g,
            "r_forward": r,
            "d_forward": d,
            "step": count(lambda: step(x, y, lung, 1)),
        }
    meta = {"generator": "tools/golden/flops_torch.py", "torch": torch.__version__,
            "counter": "torch.utils.flop_counter.FlopCounterMode", "cases": cases}
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, OUT)
    print(json.dumps(cases, indent=2))


if __name__ == "__main__":
    main()
