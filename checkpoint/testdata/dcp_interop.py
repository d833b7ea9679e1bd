"""Python side of dcp_test: real torch.distributed.checkpoint against our folders.

  load <dir> <expected.pt>
      dcp.load (single process, no process group) into a state dict built
      from the folder's metadata, then format_utils.dcp_to_torch_save; both
      must equal expected.pt's "flat" dict (flattened key -> value).
  save <dir> <expected.pt>
      dcp.save of a fixed nested state dict in one process; expected.pt gets
      {"flat": flattened dict, "nested": the state dict}.
  save_dist <dir> <expected.pt>
      the same with 2 Gloo ranks on 127.0.0.1 and DTensors sharded by rows
      and by columns; expected.pt holds the full tensors.
"""
import io
import os
import pickletools
import socket
import struct
import sys
import warnings
import zipfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

warnings.filterwarnings("ignore")


def same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b))
    return a == b


def compare_flat(got, want, what):
    assert set(got) == set(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
    for k in want:
        assert same(got[k], want[k]), f"{what}: {k}: {got[k]!r} != {want[k]!r}"


def zip_layout(data, what):
    # (name, size, compression, data) of every record but the random
    # serialization id; every record's data must start 64-byte aligned from
    # the item's start, as PyTorch's writer aligns them.
    z = zipfile.ZipFile(io.BytesIO(data))
    out = []
    for i in z.infolist():
        h = i.header_offset
        assert data[h:h + 4] == b"PK\x03\x04", f"{what}: {i.filename}: no local header"
        name_len, extra_len = struct.unpack("<HH", data[h + 26:h + 30])
        assert (h + 30 + name_len + extra_len) % 64 == 0, f"{what}: {i.filename} unaligned"
        body = b"" if i.filename.endswith("serialization_id") else z.read(i)
        if i.filename.endswith("data.pkl"):
            body = pickletools.optimize(body)  # memo PUTs are the writer's choice
        out.append((i.filename, i.compress_type, body))
    return out


def check_items_are_torch_save(d, md):
    # Every item must hold the same records as torch.save of the same object
    # into a buffer (what FileSystemWriter writes), up to the random id. (Zip
    # offsets may differ: PyTorch adds a data descriptor after each record.)
    for index, info in md.storage_data.items():
        with open(os.path.join(d, info.relative_path), "rb") as f:
            f.seek(info.offset)
            data = f.read(info.length)
        assert len(data) == info.length, f"{index.fqn}: short item"
        obj = torch.load(io.BytesIO(data), weights_only=False)
        again = io.BytesIO()
        torch.save(obj, again)
        ours, theirs = zip_layout(data, index.fqn), zip_layout(again.getvalue(), index.fqn)
        assert ours == theirs, f"{index.fqn}: {ours} != {theirs}"


def load(d, expected_path):
    want = torch.load(expected_path, weights_only=False)["flat"]
    md = FileSystemReader(d).read_metadata()
    check_items_are_torch_save(d, md)
    sd = {}
    for k, v in md.state_dict_metadata.items():
        init = torch.zeros(v.size, dtype=v.properties.dtype) if isinstance(
            v, TensorStorageMetadata) else None
        set_element(sd, md.planner_data[k], init)
    dcp.load(sd, checkpoint_id=d, no_dist=True)
    flat, _ = flatten_state_dict(sd)
    compare_flat(flat, want, "dcp.load")
    out = os.path.join(os.path.dirname(expected_path), "converted.pt")
    dcp_to_torch_save(d, out)
    flat2, _ = flatten_state_dict(torch.load(out, weights_only=False))
    compare_flat(flat2, want, "dcp_to_torch_save")
    print("OK", len(flat))


def state(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 4, generator=g)
    return {
        "model": {
            "layer.0.weight": w,
            "layer.0.bias": torch.arange(4, dtype=torch.bfloat16),
            "transposed": torch.randn(5, 3, generator=g).t(),  # saved non-contiguous
            "ids": torch.arange(12, dtype=torch.int64).reshape(3, 4),
            "mask": torch.tensor([True, False, True]),
        },
        "optimizer": {
            "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.ones(6, 4)}},
            "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0]}],
        },
        "buffers": [torch.full((2,), 3.0), torch.zeros(1)],
        "epoch": 3,
        "name": "run-1",
    }


def save(d, expected_path):
    sd = state(0)
    dcp.save(sd, checkpoint_id=d, no_dist=True)
    flat, _ = flatten_state_dict(sd)
    flat = {k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in flat.items()}
    torch.save({"flat": flat, "nested": sd}, expected_path)
    print("OK", len(flat))


def dist_full():
    return {
        "model.rows": torch.arange(35, dtype=torch.float32).reshape(7, 5),
        "model.cols": torch.arange(24, dtype=torch.float64).reshape(4, 6),
        "model.vec": torch.arange(10, dtype=torch.int32),
        "model.rep": torch.linspace(0, 1, 3),
        "model.plain": torch.full((2, 2), 7.0),
        "step": 11,
    }


def dist_worker(rank, d, port):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    full = dist_full()
    sd = {
        "model": {
            "rows": distribute_tensor(full["model.rows"], mesh, [Shard(0)]),
            "cols": distribute_tensor(full["model.cols"], mesh, [Shard(1)]),
            "vec": distribute_tensor(full["model.vec"], mesh, [Shard(0)]),
            "rep": distribute_tensor(full["model.rep"], mesh, [Replicate()]),
            "plain": full["model.plain"],
        },
        "step": full["step"],
    }
    dcp.save(sd, checkpoint_id=d)
    dist.barrier()
    dist.destroy_process_group()


def save_dist(d, expected_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(dist_worker, args=(d, port), nprocs=2)
    torch.save({"flat": dist_full()}, expected_path)
    print("OK")


if __name__ == "__main__":
    cmd, d, expected = sys.argv[1:4]
    {"load": load, "save": save, "save_dist": save_dist}[cmd](d, expected)
