#!/usr/bin/env python3
"""Golden trajectories of torch.optim.Adam for the model crate's own Adam (crates/model/src/optim.rs).

A tiny two-layer network (3 -> 40 -> 2; names as in a tch VarStore: layer1.weight, layer1.bias,
layer2.weight, layer2.bias) is trained for 5 steps on a fixed batch with
    loss = mean((tanh(x W1^T + b1) W2^T + b2 - y)^2)
by torch.optim.Adam twice: with foreach=False (the single-tensor path, the CPU default;
our `implementation = "loop"`) and with fused=True (at::_fused_adam_; our default
`implementation = "fused"`), in two settings:
  * "reggan": lr 1e-2, betas (0.5, 0.999), eps 1e-8, no weight decay; the learning rate is
    halved before step 4 (checks that a changed lr takes effect);
  * "decay_eps": lr 1e-2, betas (0.9, 0.99), eps 1e-3 (large, so that where eps enters the
    denominator matters), weight_decay 0.1;
  * "groups": as "reggan", with layer2.* in a second parameter group at 0.1x the lr (halved
    with the first): our `Adam::scale_lr("layer2.", 0.1)`, R's `optim.registration_lr_factor`.

Writes crates/model/tests/data/adam_torch.json (settings) and adam_torch_<setting>.safetensors
holding x, y, init.<name>, step<k>.<name> (parameters after step k = 1..5) and
exp_avg.<name>, exp_avg_sq.<name> (the moments after step 5) of the single-tensor run, and
the same keys prefixed with "fused." for the fused=True run.

Run: .venv-twin/bin/python tools/golden/adam_torch.py [SETTING ...]   (deterministic: fixed
seed, CPU; `make setup-twin`). Names write only those settings' files (the JSON always lists
all); the fused kernels' last bits depend on the CPU (AVX2 vs AVX-512), so regenerating a
committed file on another machine moves it by up to ~4e-7.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "model", "tests", "data")

SETTINGS = {
    "reggan": dict(lr=1e-2, betas=(0.5, 0.999), eps=1e-8, weight_decay=0.0, halve_lr_before_step=4),
    "decay_eps": dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.1, halve_lr_before_step=None),
    "groups": dict(lr=1e-2, betas=(0.5, 0.999), eps=1e-8, weight_decay=0.0, halve_lr_before_step=4,
                   layer2_lr_factor=0.1),
}
STEPS = 5
# Wide enough that the fused kernel's vectorized loop runs (not only its scalar tail).
HIDDEN = 40


def main():
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(1234)
    init = {
        "layer1.weight": torch.randn(HIDDEN, 3, generator=gen) * 0.5,
        "layer1.bias": torch.randn(HIDDEN, generator=gen) * 0.1,
        "layer2.weight": torch.randn(2, HIDDEN, generator=gen) * 0.5,
        "layer2.bias": torch.randn(2, generator=gen) * 0.1,
    }
    x = torch.randn(5, 3, generator=gen)
    y = torch.randn(5, 2, generator=gen)
    meta = {"generator": "tools/golden/adam_torch.py", "torch": torch.__version__, "steps": STEPS, "settings": {}}

    only = set(sys.argv[1:])
    unknown = only - set(SETTINGS)
    if unknown:
        sys.exit(f"unknown settings {sorted(unknown)}; choose from {sorted(SETTINGS)}")
    for name, s in SETTINGS.items():
        file = f"adam_torch_{name}.safetensors"
        meta["settings"][name] = {
            "file": file, "lr": s["lr"], "beta1": s["betas"][0], "beta2": s["betas"][1],
            "eps": s["eps"], "weight_decay": s["weight_decay"],
            "halve_lr_before_step": s["halve_lr_before_step"],
            "layer2_lr_factor": s.get("layer2_lr_factor", 1.0),
        }
        if only and name not in only:
            continue
        out = {"x": x, "y": y}
        out.update({f"init.{k}": v for k, v in init.items()})
        single = run(init, x, y, s, out, prefix="", foreach=False)
        fused = run(init, x, y, s, out, prefix="fused.", fused=True)
        gap = max((single[k] - fused[k]).abs().max().item() for k in init)
        print(f"{name}: single-tensor vs fused after {STEPS} steps: max |diff| {gap:.3g}")
        save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, file),
                  metadata={"generator": "tools/golden/adam_torch.py"})
        moved = max((single[k] - init[k]).abs().max().item() for k in init)
        print(f"{name}: largest parameter change over {STEPS} steps {moved:.4g}")

    with open(os.path.join(OUT, "adam_torch.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def run(init, x, y, s, out, prefix, **variant):
    """Trains a copy of `init` for STEPS steps with one Adam variant; records into `out`."""
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    factor = s.get("layer2_lr_factor", 1.0)
    groups = [
        {"params": [v for k, v in params.items() if not k.startswith("layer2.")], "factor": 1.0},
        {"params": [v for k, v in params.items() if k.startswith("layer2.")], "factor": factor},
    ]
    for g in groups:
        g["lr"] = s["lr"] * g["factor"]
    opt = torch.optim.Adam(
        groups, lr=s["lr"], betas=s["betas"], eps=s["eps"],
        weight_decay=s["weight_decay"], **variant,
    )
    for step in range(1, STEPS + 1):
        if s["halve_lr_before_step"] == step:
            for group in opt.param_groups:
                group["lr"] = s["lr"] / 2 * group["factor"]
        opt.zero_grad()
        hidden = torch.tanh(x @ params["layer1.weight"].T + params["layer1.bias"])
        pred = hidden @ params["layer2.weight"].T + params["layer2.bias"]
        loss = ((pred - y) ** 2).mean()
        loss.backward()
        opt.step()
        out.update({f"{prefix}step{step}.{k}": v.detach().clone() for k, v in params.items()})
    for k, v in params.items():
        st = opt.state[v]
        assert float(st["step"]) == STEPS
        out[f"{prefix}exp_avg.{k}"] = st["exp_avg"].clone()
        out[f"{prefix}exp_avg_sq.{k}"] = st["exp_avg_sq"].clone()
    return {k: v.detach().clone() for k, v in params.items()}


if __name__ == "__main__":
    main()
