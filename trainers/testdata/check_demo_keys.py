"""Checks a //trainers checkpoint against Lightning's demo Transformer
(lightning.pytorch.demos.transformer.Transformer) in the virtual environment:
the model's state dict keys (in order, for a torch.save file; as a set for a
DCP folder, which has no order), their shapes, and that the demo module loads
the weights with strict=True. Usage: check_demo_keys.py CHECKPOINT"""
import os
import sys

import torch
from lightning.pytorch.demos.transformer import Transformer


def demo_model(hp):
    return Transformer(vocab_size=hp["vocab_size"], ninp=hp["ninp"], nhead=hp["nhead"],
                       nhid=hp["nhid"], nlayers=hp["nlayers"], dropout=hp["dropout"])


def main():
    path = sys.argv[1]
    if os.path.isdir(path):
        import torch.distributed.checkpoint as dcp
        meta = torch.load(os.path.join(path, "meta.pt"), weights_only=True)
        hp = meta["hparams"]
        model = demo_model(hp)
        expected = model.state_dict()
        md = dcp.FileSystemReader(path).read_metadata()
        saved = {k[len("model."):]: v.size for k, v in md.state_dict_metadata.items()
                 if k.startswith("model.")}
        assert set(saved) == set(expected), (
            f"missing {sorted(set(expected) - set(saved))[:5]}, "
            f"unexpected {sorted(set(saved) - set(expected))[:5]}")
        for k, t in expected.items():
            assert tuple(saved[k]) == tuple(t.shape), f"{k}: {tuple(saved[k])} vs {tuple(t.shape)}"
        sd = {"model": {k: torch.zeros_like(v) for k, v in expected.items()}}
        dcp.load(sd, checkpoint_id=path)
        model.load_state_dict(sd["model"], strict=True)
        assert all(v.abs().sum() > 0 for k, v in sd["model"].items() if k.endswith("weight")), \
            "a weight loaded as zeros"
        print(f"ok: DCP folder, {len(saved)} model tensors, step {meta['step']}")
    else:
        ckpt = torch.load(path, weights_only=True)
        hp = ckpt["hparams"]
        model = demo_model(hp)
        expected = list(model.state_dict().keys())
        saved = list(ckpt["model"].keys())
        assert saved == expected, f"keys differ: first saved {saved[:4]}, first demo {expected[:4]}"
        for k, t in model.state_dict().items():
            assert ckpt["model"][k].shape == t.shape, k
        model.load_state_dict(ckpt["model"], strict=True)
        # The optimizer entry is a plain torch.optim state dict.
        opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"])
        opt.load_state_dict(ckpt["optimizer"])
        print(f"ok: file, {len(saved)} model tensors in the demo's order, step {ckpt['step']}")


main()
