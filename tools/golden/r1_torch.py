"""Golden values for the R1 gradient penalty (crates/model/tests/r1.rs), made with
torch.autograd.grad(create_graph=True) on the PyTorch twin's discriminator.

Run from the repository root (needs the full PyTorch: /work/pyref/bin/python):

    /work/pyref/bin/python tools/golden/r1_torch.py

For each case (a small D with spectral norm and instance norm; a conditional D without spectral
norm, with batch norm) it writes to crates/model/tests/data/:

  r1_<case>_config.json        the DiscriminatorConfig (model::config JSON form)
  r1_<case>_d.safetensors      D's weights keyed by our VarStore names (before the forward)
  r1_<case>_io.safetensors
      real                     the real images [B, 1, H, W] (the tensor R1 differentiates by)
      condition                the NCCT condition [B, 1, H, W] (used when conditional)
      r1                       E_b ||d sum(D(input_b)) / d real_b||^2, D in training mode
                               (one power iteration, batch-norm batch statistics)
      grad.<name>              d r1 / d <trainable variable>: the double backward
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "pytorch_twin"))
import reggan_twin as twin  # noqa: E402

OUT = ROOT / "crates" / "model" / "tests" / "data"
META = {"source": "tools/golden/r1_torch.py", "torch": torch.__version__}

SMALL = {"base_channels": 4, "n_layers": 2, "max_channels": 16}
CASES = {
    "sn": ({**SMALL}, (2, 24, 24)),
    "plain": ({**SMALL, "spectral_norm": False, "conditional": True, "norm": "batch"}, (3, 20, 16)),
}


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata=META)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_case(name: str, overrides: dict, size: tuple[int, int, int]) -> None:
    torch.manual_seed(5)
    cfg = twin.merge_config({"discriminator": overrides})["discriminator"]
    d = twin.Discriminator(cfg).train()
    # larger weights than the N(0, 0.02) start, so the gradients are far from zero
    with torch.no_grad():
        for p in d.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    weights = twin.export_state(d)
    b, h, w = size
    gen = torch.Generator().manual_seed(11)
    real = (torch.rand(b, 1, h, w, generator=gen) * 2 - 1).requires_grad_(True)
    condition = torch.rand(b, 1, h, w, generator=gen) * 2 - 1
    out = d(d.input(real, condition))
    (grad,) = torch.autograd.grad(out.sum(), real, create_graph=True)
    r1 = grad.square().flatten(1).sum(1).mean()
    names = [n for n, p in d.named_parameters()]
    # biases of the last layer do not change the input gradient: zero gradient
    grads = torch.autograd.grad(r1, [p for _, p in d.named_parameters()], materialize_grads=True)
    io = {"real": real, "condition": condition, "r1": r1.reshape(1)}
    io.update({f"grad.{n}": g for n, g in zip(names, grads)})
    atomic_save(weights, OUT / f"r1_{name}_d.safetensors")
    atomic_save(io, OUT / f"r1_{name}_io.safetensors")
    atomic_write_text(OUT / f"r1_{name}_config.json", json.dumps(cfg, indent=2) + "\n")
    print(f"{name}: r1 = {r1.item():.6g}, |grad| max {max(g.abs().max().item() for g in grads):.3g}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    for name, (overrides, size) in CASES.items():
        run_case(name, overrides, size)


if __name__ == "__main__":
    main()
