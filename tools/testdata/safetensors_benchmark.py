"""Python reference for tools/safetensors_benchmark.cc. Prints one JSON line.

  load FILE                 safetensors.torch.load_file(FILE), page cache dropped first
  load_into FILE            the same, then copied into existing tensors of the same shapes
                            (what module.load_state_dict does with it), timed together
  export DCP_FOLDER OUT MAX the Python way to export a sharded checkpoint's model to a
                            Hugging Face folder: torch DCP loads the state dict (no
                            process group), then the model entry is split at MAX bytes
                            and written with save_file, plus the index.
"""
import json
import os
import resource
import sys
import time

import torch


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    from safetensors.torch import load_file, save_file

    if sys.argv[1] in ("load", "load_into"):
        path = sys.argv[2]
        into = None
        if sys.argv[1] == "load_into":
            into = {k: torch.zeros_like(v) for k, v in load_file(path).items()}
        drop_cache(path)
        t0 = time.perf_counter()
        sd = load_file(path)
        if into is not None:
            with torch.no_grad():
                for k, v in sd.items():
                    into[k].copy_(v)
        s = time.perf_counter() - t0
        n = sum(t.numel() * t.element_size() for t in sd.values())
        print(json.dumps({"seconds": s, "bytes": n, "peak_mib": peak_mib()}))
        return
    folder, out, limit = sys.argv[2], sys.argv[3], int(sys.argv[4])
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    t0 = time.perf_counter()
    sd = {}
    _load_state_dict(sd, storage_reader=FileSystemReader(folder),
                     planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    model = sd["model"]
    shards, size = [[]], 0
    for k, v in model.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    os.makedirs(out, exist_ok=True)
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: model[k].contiguous() for k in keys}, os.path.join(out, name),
                  metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    total = sum(v.numel() * v.element_size() for v in model.values())
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                  sort_keys=True)
    for name in set(weight_map.values()):
        with open(os.path.join(out, name), "rb+") as f:
            os.fsync(f.fileno())
    s = time.perf_counter() - t0
    print(json.dumps({"seconds": s, "bytes": total, "peak_mib": peak_mib(),
                      "shards": len(shards)}))


main()
