"""Writes the fuzz seeds that Python makes (fuzz/make_seeds.sh runs it).

    python make_seeds.py OUT_DIR

OUT_DIR/<target>/py_*: pickles of every protocol, torch.save files (module
and optimizer state dicts, views, shared storages, bfloat16), Lightning's
Fabric.save, a DCP folder's .metadata, and DCP / Lightning-style folders in
the FZF1 form of fuzz/fuzz_files.h. Everything is tiny: the seeds are checked in.
"""
import collections
import io
import os
import pickle
import struct
import sys
import tempfile
import zipfile

import torch
import torch.distributed.checkpoint as dcp

out = sys.argv[1]


def write(rel, data):
    path = os.path.join(out, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def fzf(files):
    b = b"FZF1"
    for name, data in files:
        b += name.encode() + b"\n" + struct.pack("<I", len(data)) + data
    return b


def saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def data_pkl(archive):
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        return z.read(name)


torch.manual_seed(0)
plain = {
    "ints": [0, 1, -1, 255, 65535, -(2**31), 2**40, -(2**63)],
    "floats": (0.5, -0.0, float("inf")),
    "text": "héllo",
    "bytes": b"\x00\xff",
    "set": {1, 2},
    "frozen": frozenset({3}),
    "ordered": collections.OrderedDict(a=1, b=[None, True, False]),
    "nested": {"x": {"y": [1, (2, 3)]}},
}
for proto in range(0, 6):
    write(f"pickle/py_plain_p{proto}.pkl", pickle.dumps(plain, protocol=proto))

model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
opt = torch.optim.AdamW(model.parameters(), lr=0.01)
model(torch.randn(4, 3)).sum().backward()
opt.step()
base = torch.arange(12, dtype=torch.float32)
state = {
    "model": model.state_dict(),
    "optimizer": opt.state_dict(),
    "views": {"t": base.view(3, 4).t(), "row": base[4:8], "same": base},
    "bf16": torch.ones(3, dtype=torch.bfloat16),
    "param": torch.nn.Parameter(torch.zeros(2)),
    "epoch": 3,
}
pt = saved(state)
write("torch_file/py_state.pt", pt)
write("zip/py_state.pt", pt)
write("cli/py_state.pt", pt)
write("pickle/py_state_data.pkl", data_pkl(pt))
small = saved({"w": torch.tensor([1.0, 2.0])})
write("torch_file/py_small.pt", small)
write("zip/py_small.pt", small)

with tempfile.TemporaryDirectory() as tmp:
    # Lightning's single-file save.
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    path = os.path.join(tmp, "lightning.ckpt")
    fabric.save(path, {"model": model, "optimizer": opt, "step": 5, "hparams": {"lr": 0.01}})
    with open(path, "rb") as f:
        lightning = f.read()
    write("torch_file/py_lightning.ckpt", lightning)
    write("cli/py_lightning.ckpt", lightning)
    write("pickle/py_lightning_data.pkl", data_pkl(lightning))

    # A DCP folder from one process, and the same with Lightning's meta.pt.
    d = os.path.join(tmp, "dcp")
    sd = {"model": {"w": torch.arange(4.0), "b": torch.ones(2, 2)}, "epoch": 2,
          "extra": ["a", {"k": torch.zeros(1)}]}
    dcp.save(sd, checkpoint_id=d, no_dist=True)
    files = []
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            files.append((name, f.read()))
    metadata = dict(files)[".metadata"]
    write("dcp_metadata/py.metadata", metadata)
    write("pickle/py.metadata", metadata)
    shard = next(data for name, data in files if name.endswith(".distcp"))
    write("zip/py_0_0.distcp", shard)
    write("cli/py_dcp.fzf", fzf(files))
    write("cli/py_lightning_sharded.fzf",
          fzf(files + [("meta.pt", saved({"step": 5, "hparams": {"lr": 0.01}}))]))
print("wrote Python seeds under", out)
