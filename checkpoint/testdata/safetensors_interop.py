"""Python side of checkpoint/safetensors_test.cc, with the real `safetensors`
package (pinned in third_party/python/requirements.txt).

  write DIR   safetensors.torch.save_file of every dtype the C++ side maps, with
              and without __metadata__; the same tensors as raw bytes
              (DIR/expected: manifest.txt "name<TAB>DTYPE<TAB>dims" and <i>.bin,
              a reference that needs no format of its own); and a sharded
              Hugging Face folder (DIR/sharded: two shards, a plain-JSON index).
  check DIR   loads DIR/ours.safetensors (written by C++) with
              safetensors.torch.load_file and compares every tensor bit for bit
              with the raw bytes the C++ side wrote (DIR/expected), its metadata
              with ours_expected_meta.json, then saves the loaded tensors again
              with save_file and compares the file's bytes with ours.
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def tensors():
    g = torch.Generator().manual_seed(7)
    f32 = torch.randn(3, 4, generator=g)
    out = {
        "f32": f32,
        "bf16": torch.randn(5, generator=g).to(torch.bfloat16),
        "fp16": torch.randn(2, 3, generator=g).to(torch.float16),
        "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "i64": torch.arange(-3, 4, dtype=torch.int64) * (1 << 40),
        "i32": torch.arange(-5, 5, dtype=torch.int32),
        "i16": torch.arange(-4, 4, dtype=torch.int16),
        "i8": torch.arange(-8, 8, dtype=torch.int8),
        "u8": torch.arange(0, 256, 17, dtype=torch.uint8),
        "u16": torch.arange(0, 6, dtype=torch.int32).to(torch.uint16),
        "u32": torch.arange(0, 6, dtype=torch.int64).to(torch.uint32),
        "u64": torch.arange(0, 6, dtype=torch.int64).to(torch.uint64),
        "bool": torch.tensor([True, False, True, True, False, False]),
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 3),
        "empty_i64": torch.empty(4, 0, dtype=torch.int64),
        "f8_e4m3": torch.randn(8, generator=g).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(8, generator=g).to(torch.float8_e5m2),
        "c64": torch.randn(3, generator=g, dtype=torch.complex64),
        "layer.0.weight": f32.t().contiguous() * 2,
    }
    return out


NAMES = {
    torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.complex64: "C64",
}
DTYPES = {v: k for k, v in NAMES.items()}


def bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def dump(d, ts):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "manifest.txt"), "w", encoding="utf8") as f:
        for i, (k, t) in enumerate(ts.items()):
            f.write("\t".join([k, NAMES[t.dtype]] + [str(x) for x in t.shape]) + "\n")
            with open(os.path.join(d, f"{i}.bin"), "wb") as b:
                b.write(bits(t).numpy().tobytes())


def undump(d):
    out = {}
    with open(os.path.join(d, "manifest.txt"), encoding="utf8") as f:
        for i, line in enumerate(f.read().splitlines()):
            k, dtype, *dims = line.split("\t")
            with open(os.path.join(d, f"{i}.bin"), "rb") as b:
                raw = bytearray(b.read())
            shape = [int(x) for x in dims]
            dt = DTYPES[dtype]
            t = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            out[k] = t.view(dt).reshape(shape) if raw else torch.empty(shape, dtype=dt)
    return out


def write(d):
    ts = tensors()
    meta = {"format": "pt", "note": "caf\u00e9 \"quoted\""}
    save_file(ts, os.path.join(d, "py.safetensors"), metadata=meta)
    save_file({"a": ts["f32"], "b": ts["i64"]}, os.path.join(d, "py_nometa.safetensors"))
    dump(os.path.join(d, "expected"), ts)
    with open(os.path.join(d, "expected_meta.json"), "w", encoding="utf8") as f:
        json.dump(meta, f)
    # A sharded folder as save_pretrained lays it out, index in plain JSON.
    sh = os.path.join(d, "sharded")
    os.makedirs(sh, exist_ok=True)
    names = sorted(ts)
    parts = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: ts[k] for k in part}, os.path.join(sh, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(t.numel() * t.element_size() for t in ts.values())
    with open(os.path.join(sh, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    print("wrote", len(ts), "tensors")


def check(d):
    ours = os.path.join(d, "ours.safetensors")
    loaded = load_file(ours)
    expected = undump(os.path.join(d, "expected"))
    assert list(sorted(loaded)) == list(sorted(expected)), (sorted(loaded), sorted(expected))
    for k, e in expected.items():
        t = loaded[k]
        assert t.dtype == e.dtype, f"{k}: {t.dtype} vs {e.dtype}"
        assert t.shape == e.shape, f"{k}: {t.shape} vs {e.shape}"
        assert torch.equal(bits(t), bits(e)), f"{k}: bytes differ"
    with open(os.path.join(d, "ours_expected_meta.json"), encoding="utf8") as f:
        meta = json.load(f)
    with safe_open(ours, framework="pt") as f:
        assert f.metadata() == meta, f"metadata {f.metadata()} vs {meta}"
    again = os.path.join(d, "python_again.safetensors")
    save_file(loaded, again, metadata=meta)
    with open(ours, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read(), "our file's bytes differ from save_file's for the same tensors"
    print(f"ok: {len(expected)} tensors bit-exact, metadata equal, file byte-identical to save_file")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](sys.argv[2])
