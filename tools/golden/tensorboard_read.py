#!/usr/bin/env python3
"""TensorBoard's own reading of ncct2ctpa's event files.

    .venv-twin/bin/python tools/golden/tensorboard_read.py
reads crates/train/tests/data/tensorboard/ (event files our writer made, see
crates/train/tests/tensorboard.rs) with TensorBoard's EventAccumulator, which applies
TensorBoard's restart semantics (a SessionLog.START purges later steps of earlier files), and
writes golden.json beside them: every scalar tag's (step, value) list, every image tag's
(step, width, height), every text tag's (step, text). The Rust test compares our reader's view
with it.

    .venv-twin/bin/python tools/golden/tensorboard_read.py RUN_DIR
prints the same summary of a real run folder (to check a run by hand).
"""
import json
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator, TENSORS
import tensorboard

HERE = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "train", "tests", "data",
                    "tensorboard")


def summary(path):
    acc = EventAccumulator(path, size_guidance={TENSORS: 0, "scalars": 0, "images": 0},
                           purge_orphaned_data=True)
    acc.Reload()
    tags = acc.Tags()
    out = {"made_by": "tools/golden/tensorboard_read.py (tensorboard %s EventAccumulator)"
                      % tensorboard.__version__,
           "scalars": {}, "images": {}, "texts": {}}
    for t in tags["scalars"]:
        out["scalars"][t] = [[e.step, e.value] for e in acc.Scalars(t)]
    for t in tags["images"]:
        out["images"][t] = [[e.step, e.width, e.height] for e in acc.Images(t)]
    for t in tags["tensors"]:
        out["texts"][t] = [[e.step, e.tensor_proto.string_val[0].decode()] for e in acc.Tensors(t)]
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        s = summary(sys.argv[1])
        for kind in ("scalars", "images", "texts"):
            for tag, points in sorted(s[kind].items()):
                steps = [p[0] for p in points]
                print(f"{kind:8} {tag:28} {len(points):4} points, steps {steps[0]}..{steps[-1]}")
    else:
        s = summary(HERE)
        with open(os.path.join(HERE, "golden.json"), "w") as f:
            json.dump(s, f, indent=1)
            f.write("\n")
        print(json.dumps(s))
