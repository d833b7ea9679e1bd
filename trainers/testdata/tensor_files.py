"""Raw tensor exchange between the C++ tests and Python (test helper).

A tensor set is two files in one folder: `manifest.txt`, one line per tensor
`<name> <dtype> <dim0> <dim1> ...` (dtype float32 or int64, in file order),
and `tensors.bin`, the tensors' little-endian bytes back to back. Optional
lines `# key value...` carry metadata.
"""

import os

import torch

_DTYPES = {"float32": torch.float32, "int64": torch.int64}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read(folder):
    """Returns (dict name -> tensor in file order, dict meta key -> list of str)."""
    tensors, meta = {}, {}
    with open(os.path.join(folder, "tensors.bin"), "rb") as f:
        blob = f.read()
    offset = 0
    with open(os.path.join(folder, "manifest.txt"), encoding="utf8") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            if fields[0] == "#":
                meta[fields[1]] = fields[2:]
                continue
            name, dtype, shape = fields[0], _DTYPES[fields[1]], [int(d) for d in fields[2:]]
            t = torch.empty(shape, dtype=dtype)
            nbytes = t.numel() * t.element_size()
            t = torch.frombuffer(bytearray(blob[offset : offset + nbytes]), dtype=dtype).reshape(shape)
            offset += nbytes
            tensors[name] = t
    if offset != len(blob):
        raise ValueError(f"{folder}: manifest covers {offset} of {len(blob)} bytes")
    return tensors, meta


def write(folder, tensors, meta=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "manifest.txt"), "w", encoding="utf8") as m, open(
        os.path.join(folder, "tensors.bin"), "wb"
    ) as b:
        for key, values in (meta or {}).items():
            m.write(" ".join(["#", key] + [str(v) for v in values]) + "\n")
        for name, t in tensors.items():
            t = t.detach().contiguous().cpu()
            m.write(" ".join([name, _NAMES[t.dtype]] + [str(d) for d in t.shape]) + "\n")
            b.write(t.numpy().tobytes())
