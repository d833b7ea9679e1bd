"""Python side of tools/convert_test.cc (real torch and safetensors).

  make DIR                  DIR/state.pt   {"model": sd, "optimizer": ..., "step": 3} (torch.save)
                            DIR/bare.pt    torch.save(sd)
                            DIR/hf.safetensors  save_file(sd2) with __metadata__
                            sd covers f32, bf16, f16, f64, i64, bool, 0-dim, empty and a
                            transposed (non-contiguous) view.
  file ST REF [ENTRY [DTYPE]]   load_file(ST) equals torch.load(REF)[ENTRY] ('' = whole
                            file) bit for bit; with DTYPE (bfloat16/float16) floating
                            tensors of REF are cast first.
  folder DIR REF ENTRY      DIR is a Hugging Face sharded folder: the index (plain JSON)
                            maps every tensor to a shard that holds it, total_size is
                            right, and the tensors equal torch.load(REF)[ENTRY].
  pt PT ST [ENTRY]          torch.load(PT)[ENTRY] equals load_file(ST) bit for bit.
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def same(a, b, what):
    assert set(a) == set(b), f"{what}: keys {sorted(set(a) ^ set(b))} differ"
    for k in a:
        x, y = a[k], b[k]
        assert x.dtype == y.dtype, f"{what}: {k}: {x.dtype} vs {y.dtype}"
        assert x.shape == y.shape, f"{what}: {k}: {x.shape} vs {y.shape}"
        assert torch.equal(bits(x), bits(y)), f"{what}: {k}: bytes differ"


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out.update(flat({str(i): x for i, x in enumerate(v)}, key + "."))
        elif isinstance(v, torch.Tensor):
            out[key] = v
    return out


def reference(path, entry, dtype=None):
    ref = torch.load(path, weights_only=True)
    ref = flat(ref[entry] if entry else ref)
    if dtype:
        dt = getattr(torch, dtype)
        ref = {k: v.to(dt) if v.dtype in (torch.float32, torch.float64, torch.float16,
                                          torch.bfloat16) else v for k, v in ref.items()}
    return ref


def make(d):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 33, generator=g)
    sd = {
        "embed.weight": torch.randn(10, 8, generator=g).to(torch.float16),
        "layer.weight": w,
        "layer.weight_t": w.t(),  # a strided view of the same storage
        "layer.bias": torch.randn(17, generator=g).to(torch.bfloat16),
        "layer.scale": torch.tensor(0.5, dtype=torch.float64),
        "ids": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 4),
    }
    opt = {"state": {0: {"exp_avg": torch.randn(64, 33, generator=g), "step": torch.tensor(3.0)}},
           "param_groups": [{"lr": 0.1, "params": [0]}]}
    torch.save({"model": sd, "optimizer": opt, "step": 3}, os.path.join(d, "state.pt"))
    torch.save(sd, os.path.join(d, "bare.pt"))
    sd2 = {k: v.contiguous() for k, v in sd.items() if k != "layer.weight_t"}
    save_file(sd2, os.path.join(d, "hf.safetensors"), metadata={"format": "pt", "source": "py"})
    print("made")


def main():
    mode = sys.argv[1]
    if mode == "make":
        make(sys.argv[2])
    elif mode == "file":
        st, ref = sys.argv[2], sys.argv[3]
        entry = sys.argv[4] if len(sys.argv) > 4 else "model"
        dtype = sys.argv[5] if len(sys.argv) > 5 else None
        same(load_file(st), reference(ref, entry, dtype), st)
        with safe_open(st, framework="pt") as f:
            assert f.metadata().get("format") == "pt", f.metadata()
        print("ok file")
    elif mode == "folder":
        d, ref, entry = sys.argv[2], sys.argv[3], sys.argv[4]
        with open(os.path.join(d, "model.safetensors.index.json")) as f:
            index = json.load(f)
        shards = sorted(set(index["weight_map"].values()))
        sd = {}
        for s in shards:
            part = load_file(os.path.join(d, s))
            for k in part:
                assert index["weight_map"][k] == s, f"{k} is in {s}, index says {index['weight_map'][k]}"
            sd.update(part)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
        same(sd, reference(ref, entry), d)
        print(f"ok folder {len(shards)} shards")
    elif mode == "pt":
        pt, st = sys.argv[2], sys.argv[3]
        entry = sys.argv[4] if len(sys.argv) > 4 else ""
        loaded = torch.load(pt, weights_only=True)
        same(loaded[entry] if entry else loaded, load_file(st), pt)
        print("ok pt")


main()
