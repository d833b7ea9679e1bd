"""Python side of trainers/transformer_test.cc.

Usage: transformer_reference.py <cpp_dir> <out_dir>

<cpp_dir> (written by the C++ test, see tensor_files.py) holds the C++ model's
state dict, `__inputs__` and `__target__`, and a `# config vocab ninp nhead
nhid nlayers dropout` line. This script builds Lightning's demo Transformer of
that config and writes into <out_dir>:
  cpp_weights/   log-probs of the demo with the C++ weights loaded (strict),
  python/        the demo's own state dict (seed 0) and its log-probs,
  keys.txt       `<preset> <key> <dims...>` for the presets demo and 1b,
                 built on the meta device, with their parameter counts.
Every forward runs in eval mode under torch.no_grad().
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tensor_files  # noqa: E402
from lightning.pytorch.demos.transformer import Transformer  # noqa: E402


def build(vocab, ninp, nhead, nhid, nlayers, dropout):
    return Transformer(vocab_size=vocab, ninp=ninp, nhead=nhead, nhid=nhid, nlayers=nlayers, dropout=dropout)


def forward(model, inputs, target):
    model.eval()
    with torch.no_grad():
        return model(inputs, target)


def main():
    cpp_dir, out_dir = sys.argv[1], sys.argv[2]
    tensors, meta = tensor_files.read(cpp_dir)
    c = meta["config"]
    config = (int(c[0]), int(c[1]), int(c[2]), int(c[3]), int(c[4]), float(c[5]))
    inputs = tensors.pop("__inputs__")
    target = tensors.pop("__target__")

    # C++ weights into the Python demo: strict, so names and shapes must agree.
    model = build(*config)
    model.load_state_dict(tensors, strict=True)
    if list(model.state_dict().keys()) != list(tensors.keys()):
        raise SystemExit("C++ state dict order differs from the demo's")
    tensor_files.write(os.path.join(out_dir, "cpp_weights"), {"logp": forward(model, inputs, target)})

    # The demo's own weights and output, for the other direction.
    torch.manual_seed(0)
    model = build(*config)
    state = dict(model.state_dict())
    state["__logp__"] = forward(model, inputs, target)
    tensor_files.write(os.path.join(out_dir, "python"), state)

    # Names and shapes of the bigger presets, without memory.
    with open(os.path.join(out_dir, "keys.txt"), "w", encoding="utf8") as f:
        presets = {"demo": (33278, 200, 2, 200, 2, 0.2), "1b": (33278, 1024, 64, 4096, 32, 0.2)}
        for name, preset in presets.items():
            with torch.device("meta"):
                m = build(*preset)
            for key, value in m.state_dict().items():
                f.write(" ".join([name, key] + [str(d) for d in value.shape]) + "\n")
            f.write(f"{name} __count__ {sum(p.numel() for p in m.parameters())}\n")


if __name__ == "__main__":
    main()
