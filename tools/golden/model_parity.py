"""Golden files for crates/model/tests/parity.rs: the PyTorch twin's weights and outputs.

Run from the repository root (needs the full PyTorch: /work/pyref/bin/python):

    /work/pyref/bin/python tools/golden/model_parity.py

For each case (the `tiny` preset; a small config with batch norm, a 2.5D input, GELU and a
conditional D; and `tiny` with R's bottleneck self-attention and D without spectral norm) it builds G, R and D with tools/pytorch_twin/reggan_twin.py and writes to
crates/model/tests/data/:

  parity_<case>_config.json       the model config, in model::config::ModelConfig's JSON form
  parity_<case>_{g,r,d}.safetensors   weights keyed by our VarStore names (u/v included)
  parity_<case>_io.safetensors    inputs and outputs:
      ncct, ctpa                  the fixed inputs
      g_eval                      G(ncct), eval mode
      g_train                     G(ncct), train mode (after g_eval; batch norm updates stats)
      r_flow                      R(g_eval, ctpa), eval mode
      d_input                     D's input: image g_eval (+ ncct's first channel when conditional)
      d_eval                      D(d_input), eval mode (no power iteration)
      d_train                     D(d_input), train mode (one power iteration per conv)
      d_eval_after                D(d_input), eval mode after that train forward
      after.<name>                D's u, v and running statistics after the train forward
  parity_warp.safetensors         image, flow (non-integer, partly out of bounds), warped
  parity_param_counts.json        the twin's trainable parameter counts for every preset

To make the comparison sensitive, R's attention gamma is set to 0.8 (it starts at 0, the
identity), R's head is re-drawn at N(0, 0.1) (its N(0, 1e-5) start
would give a flow of ~0 that any R matches), G's head at N(0, 1) (with N(0, 0.02) everywhere
the small case's output is ~1e-4) and batch-norm running statistics are filled by
two training forwards on other data before export.
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
META = {"source": "tools/golden/model_parity.py", "torch": torch.__version__}

CASES = {
    "tiny": (twin.preset("tiny"), (2, 32, 32)),
    "small": (
        twin.merge_config(
            {
                "generator": {
                    "in_channels": 3,
                    "base_channels": 4,
                    "depth": 2,
                    "max_channels": 16,
                    "convs_per_stage": 1,
                    "norm": "batch",
                    "activation": "leaky_relu",
                },
                "registration": {
                    "base_channels": 4,
                    "depth": 1,
                    "max_channels": 8,
                    "norm": "instance",
                    "activation": "gelu",
                },
                "discriminator": {
                    "conditional": True,
                    "base_channels": 4,
                    "n_layers": 2,
                    "max_channels": 16,
                    "norm": "batch",
                },
            }
        ),
        (3, 24, 20),
    ),
    # R with the bottleneck self-attention (gamma re-drawn non-zero below) and D without
    # spectral norm (plain convs, the R1-instead-of-SN arm)
    "attention": (
        twin.merge_config(
            {
                "registration": {**twin.PRESETS["tiny"]["registration"], "attention": True},
                "generator": {"base_channels": 4, "depth": 2, "max_channels": 16, "convs_per_stage": 1},
                "discriminator": {**twin.PRESETS["tiny"]["discriminator"], "spectral_norm": False},
            }
        ),
        (2, 32, 32),
    ),
}


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata=META)
    os.replace(tmp, path)


def image(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A smooth image with texture in [-1, 1]: sums of random sinusoids plus noise."""
    b, c, h, w = shape
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w)
    out = torch.zeros(shape)
    for _ in range(4):
        f = torch.rand(b, c, 1, 1, generator=gen) * 6 + 1
        p = torch.rand(b, c, 1, 1, generator=gen) * 6.28
        a = torch.rand(b, c, 1, 1, generator=gen) * 0.4
        out += a * torch.sin(f * xs * 3.1 + p) * torch.cos(f * ys * 2.3 - p)
    out += 0.05 * torch.randn(shape, generator=gen)
    return out.clamp(-1, 1)


def run_case(name: str, cfg: dict, size: tuple[int, int, int]) -> None:
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(99)
    batch, h, w = size
    g, r, d = twin.build(cfg)
    torch.nn.init.normal_(r.head.weight, 0.0, 0.1)
    torch.nn.init.normal_(r.head.bias, 0.0, 0.1)
    torch.nn.init.normal_(g.head.weight, 0.0, 1.0)
    torch.nn.init.normal_(g.head.bias, 0.0, 0.1)
    if r.attn is not None:
        # gamma starts at 0 (the block is then the identity, which any R matches)
        with torch.no_grad():
            r.attn.gamma.fill_(0.8)

    in_ch = cfg["generator"]["in_channels"]
    # fill batch-norm running statistics (no-op for instance norm)
    with torch.no_grad():
        for _ in range(2):
            x = image((batch, in_ch, h, w), gen)
            g.train()(x)
            d.train()(d.input(image((batch, 1, h, w), gen), x[:, :1]))

    ncct = image((batch, in_ch, h, w), gen)
    ctpa = image((batch, 1, h, w), gen)
    weights = {
        "g": twin.export_state(g),
        "r": twin.export_state(r),
        "d": twin.export_state(d),
    }
    with torch.no_grad():
        g_eval = g.eval()(ncct)
        r_flow = r.eval()(g_eval, ctpa)
        d_input = d.input(g_eval, ncct[:, :1])
        d_eval = d.eval()(d_input)
        d_train = d.train()(d_input)
        d_eval_after = d.eval()(d_input)
        g_train = g.train()(ncct)
    io = {
        "ncct": ncct,
        "ctpa": ctpa,
        "g_eval": g_eval,
        "g_train": g_train,
        "r_flow": r_flow,
        "d_input": d_input,
        "d_eval": d_eval,
        "d_train": d_train,
        "d_eval_after": d_eval_after,
    }
    # the state a train forward changes: spectral-norm u/v and batch-norm running statistics
    changed = ("weight_u", "weight_v", "running_mean", "running_var")
    io.update({f"after.{k}": v for k, v in twin.export_state(d).items() if k.endswith(changed)})

    for net, state in weights.items():
        atomic_save(state, OUT / f"parity_{name}_{net}.safetensors")
    atomic_save(io, OUT / f"parity_{name}_io.safetensors")
    atomic_write_text(OUT / f"parity_{name}_config.json", json.dumps(cfg, indent=2) + "\n")
    print(
        f"{name}: G {twin.count_parameters(g)}, R {twin.count_parameters(r)}, "
        f"D {twin.count_parameters(d)} parameters; |flow| max {r_flow.abs().max():.3f}, "
        f"D logits {tuple(d_eval.shape)}"
    )


def warp_case() -> None:
    gen = torch.Generator().manual_seed(7)
    img = image((2, 2, 12, 16), gen)
    ys = torch.linspace(-1, 1, 12).view(1, 12, 1)
    xs = torch.linspace(-1, 1, 16).view(1, 1, 16)
    # smooth, non-integer, reaching outside the image at the borders (exercises padding)
    dx = 2.5 * torch.sin(2.0 * ys + torch.tensor([[[0.0]], [[1.0]]])) + 0.7 * xs
    dy = -1.8 * torch.cos(1.5 * xs) + 0.3 * ys * xs + torch.tensor([[[0.25]], [[-0.4]]])
    flow = torch.stack([dx, dy], 1).float()
    atomic_save(
        {"image": img, "flow": flow, "warped": twin.warp(img, flow)},
        OUT / "parity_warp.safetensors",
    )


def param_counts() -> None:
    counts = {}
    for name in twin.PRESETS:
        g, r, d = twin.build(twin.preset(name))
        counts[name] = {
            "generator": twin.count_parameters(g),
            "registration": twin.count_parameters(r),
            "discriminator": twin.count_parameters(d),
        }
    doc = {"source": META["source"], "torch": META["torch"], "trainable": counts}
    atomic_write_text(OUT / "parity_param_counts.json", json.dumps(doc, indent=2) + "\n")
    print("parameter counts:", json.dumps(counts))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    for name, (cfg, size) in CASES.items():
        run_case(name, cfg, size)
    warp_case()
    param_counts()


if __name__ == "__main__":
    main()
