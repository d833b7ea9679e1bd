"""Shared by the interoperability scripts: the models, data and optimizers that
the C++ side (interop_test.cc) builds identically."""
import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw")


def make_model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def make_optimizer(name, params):
    # foreach=False: the single-tensor update, the same arithmetic as LibTorch's.
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, foreach=False)
    if name == "adam":
        return torch.optim.Adam(params, lr=0.01, weight_decay=0.01, foreach=False)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1, foreach=False)
    raise ValueError(name)


def make_data():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 4, generator=g)
    y = torch.randn(16, 2, generator=g)
    return x, y


def train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()


def misc_values():
    """Every common dtype, views, shared storages and plain Python values."""
    g = torch.Generator().manual_seed(3)
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "f32": torch.randn(5, generator=g),
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "f16": torch.randn(4, generator=g).half(),
        "bf16": torch.randn(4, generator=g).bfloat16(),
        "i64": torch.arange(-3, 3),
        "i32": torch.arange(5, dtype=torch.int32) * -7,
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(3, generator=g, dtype=torch.complex64),
        "base": base,
        "view_t": base.t(),
        "row": base[1],
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }
    plain = {
        "nested": [1, 2.5, "str", None, True, (1, "a"), {"k": [7, 8]}],
        "big_int": 2**40,
        "neg": -7,
        "unicode": "h\u00e9llo \u2713",
    }
    return tensors, plain


def write_raw(tensors, path):
    """One line per tensor: name dtype shape, then its bytes in row-major order."""
    with open(path + ".txt", "w") as manifest, open(path + ".bin", "wb") as raw:
        for name, t in tensors.items():
            c = t.contiguous()
            b = c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b""
            dtype = str(t.dtype).replace("torch.", "")
            shape = ",".join(str(s) for s in t.shape)
            manifest.write(f"{name} {dtype} {shape or '-'} {raw.tell()} {len(b)}\n")
            raw.write(b)
