"""Python side of transformer_export_test.cc: the Hugging Face way to use an
exported checkpoint. Builds Lightning's demo Transformer from the trainer's
hparams (meta.pt of the sharded checkpoint), loads the exported weights with
safetensors and load_state_dict(strict=True), and evaluates it as
//trainers:load does (the split in order, batches of BATCH, the first N).

Usage: demo_eval.py WEIGHTS CHECKPOINT_DIR VALID_TXT BATCH N
WEIGHTS: a .safetensors file, or a folder whose model.safetensors.index.json
is read with plain JSON (as transformers does) and whose shards are loaded one
by one.
"""
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.demos.transformer import Transformer, WikiText2
from safetensors.torch import load_file


def load_weights(path):
    if not os.path.isdir(path):
        return load_file(path)
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        index = json.load(f)
    sd = {}
    for shard in sorted(set(index["weight_map"].values())):
        sd.update(load_file(os.path.join(path, shard)))
    assert set(sd) == set(index["weight_map"]), "index and shards disagree"
    total = sum(t.numel() * t.element_size() for t in sd.values())
    assert index["metadata"]["total_size"] == total, (index["metadata"], total)
    print(f"index: {len(sd)} tensors in {len(set(index['weight_map'].values()))} shards")
    return sd


def main():
    weights, ckpt, valid, batch, n = sys.argv[1:6]
    batch, n = int(batch), int(n)
    hp = torch.load(os.path.join(ckpt, "meta.pt"), weights_only=True)["hparams"]
    model = Transformer(vocab_size=hp["vocab_size"], ninp=hp["ninp"], nhead=hp["nhead"],
                        nhid=hp["nhid"], nlayers=hp["nlayers"], dropout=hp["dropout"])
    model.load_state_dict(load_weights(weights), strict=True)
    with tempfile.TemporaryDirectory() as scratch:
        os.symlink(os.path.abspath(valid), os.path.join(scratch, "wikitext-2.txt"))
        data = WikiText2(data_dir=Path(scratch), block_size=hp["block_size"], download=False)
    assert len(data.dictionary) == hp["vocab_size"]
    model.eval()
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for b in range(min(n, math.ceil(len(data) / batch))):
            items = [data[i] for i in range(b * batch, min(len(data), (b + 1) * batch))]
            inputs = torch.stack([x for x, _ in items])
            target = torch.stack([y for _, y in items])
            loss = F.nll_loss(model(inputs, target), target.view(-1))
            loss_sum += loss.item() * target.numel()
            tokens += target.numel()
    print(f"eval_loss {loss_sum / tokens:.9g} tokens {tokens}")


main()
