"""Python side of trainers/wikitext2_test.cc.

Usage: wikitext2_reference.py <out_dir> <name>=<text file>:<block_size> ...

For each text file, builds Lightning's demo WikiText2 dataset from it (the
demo reads <data_dir>/wikitext-2.txt, so the file is linked under that name
into a scratch folder) and writes into <out_dir>/<name>/:
  vocab.txt    the dictionary's idx2word, one word a line,
  summary.txt  `vocab_size N`, `len N`, `tokens N`, `loader_len N`,
  manifest.txt/tensors.bin (tensor_files.py):
               data, sample_<i>_inputs/target for a few indices,
               sampler_<R>_<rank>_<shuffle>_<seed>_<drop_last>_<epoch>: the
               indices DistributedSampler yields, and loader_<k>_inputs/target:
               batches of DataLoader(batch_size=4, DistributedSampler(2, 1,
               seed 42), epoch 1).
"""

import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tensor_files  # noqa: E402
from lightning.pytorch.demos.transformer import WikiText2  # noqa: E402

SAMPLERS = [
    # num_replicas, rank, shuffle, seed, drop_last, epoch
    (2, 0, True, 42, False, 0),
    (2, 1, True, 42, False, 0),
    (2, 1, True, 42, False, 3),
    (3, 2, True, 7, True, 1),
    (3, 0, True, 7, False, 1),
    (4, 1, False, 0, False, 0),
]


def reference(out, text_file, block_size):
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        os.symlink(os.path.abspath(text_file), os.path.join(scratch, "wikitext-2.txt"))
        dataset = WikiText2(data_dir=Path(scratch), block_size=block_size, download=False)

    with open(os.path.join(out, "vocab.txt"), "w", encoding="utf8") as f:
        f.write("\n".join(dataset.dictionary.idx2word) + "\n")

    n = len(dataset)
    tensors = {"data": dataset.data}
    for i in sorted({0, 1, 2, n // 2, n - 1}):
        inputs, target = dataset[i]
        tensors[f"sample_{i}_inputs"] = inputs
        tensors[f"sample_{i}_target"] = target
    for replicas, rank, shuffle, seed, drop_last, epoch in SAMPLERS:
        sampler = DistributedSampler(
            dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        sampler.set_epoch(epoch)
        name = f"sampler_{replicas}_{rank}_{int(shuffle)}_{seed}_{int(drop_last)}_{epoch}"
        tensors[name] = torch.tensor(list(sampler), dtype=torch.int64)

    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=42)
    sampler.set_epoch(1)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler)
    batches = list(loader)
    for k in sorted({0, 1, len(batches) - 1}):
        tensors[f"loader_{k}_inputs"] = batches[k][0]
        tensors[f"loader_{k}_target"] = batches[k][1]
    tensor_files.write(out, tensors)

    with open(os.path.join(out, "summary.txt"), "w", encoding="utf8") as f:
        f.write(f"vocab_size {dataset.vocab_size}\nlen {n}\ntokens {len(dataset.data)}\n")
        f.write(f"loader_len {len(loader)}\n")


def main():
    out_dir = sys.argv[1]
    for spec in sys.argv[2:]:
        name, rest = spec.split("=", 1)
        text_file, block_size = rest.rsplit(":", 1)
        reference(os.path.join(out_dir, name), text_file, int(block_size))


if __name__ == "__main__":
    main()
