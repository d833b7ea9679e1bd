"""Python side of the `fabric` tool tests and benchmark.

  fsdp OUT WORLD            a Lightning-Fabric-style FSDP sharded folder, written on CPU by
                            WORLD Gloo ranks through Lightning's own FSDP save helpers
                            (Fabric itself refuses FSDP on CPU) plus meta.pt
  dcp OUT WORLD             a plain torch.distributed.checkpoint folder (no meta.pt);
                            WORLD=1 saves without a process group, WORLD>1 saves DTensors
                            sharded along dim 0 from Gloo ranks
  lightning FOLDER OUT      Lightning's consolidation (consolidate_checkpoint's code path)
  dcp_to_torch_save FOLDER OUT
  compare A B               torch.load both (mmap); exit 1 unless equal, tensors bit-exact
  load FILE                 torch.load and print a one-line summary
"""
import os
import socket
import sys
from pathlib import Path

import torch


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank, world, port):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _fsdp_rank(rank, world, out, port):
    import warnings

    warnings.filterwarnings("ignore")
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save, _get_sharded_state_dict_context

    _init(rank, world, port)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    # What FSDPStrategy.save_checkpoint(state_dict_type="sharded") does.
    with _get_sharded_state_dict_context(model):
        converted = {"model": model.state_dict(), "optimizer": FSDP.optim_state_dict(model, opt)}
    _distributed_checkpoint_save(converted, path)
    if rank == 0:
        meta = {"step": 7, "extra": {"name": "run", "t": torch.arange(3), "pair": (1, 2.5)}}
        torch.save(meta, path / "meta.pt")
    dist.barrier()
    dist.destroy_process_group()


def _dcp_rank(rank, world, out, port):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    _init(rank, world, port)
    mesh = init_device_mesh("cpu", (world,))
    full = _dcp_state()
    sd = {
        "model": {k: distribute_tensor(v, mesh, [Shard(0)]) if v.dim() > 0 else v
                  for k, v in full["model"].items()},
        "epoch": full["epoch"],
    }
    dcp.save(sd, checkpoint_id=out)
    dist.destroy_process_group()


def _dcp_state():
    g = torch.Generator().manual_seed(1)
    return {
        "model": {
            "emb.weight": torch.randn(10, 4, generator=g),
            "norm.bias": torch.randn(7, generator=g).to(torch.bfloat16),
            "count": torch.tensor(5, dtype=torch.int64),
            "ids": torch.arange(9, dtype=torch.int32),
        },
        "epoch": 3,
    }


def spawn(fn, world, out):
    import torch.multiprocessing as mp

    mp.spawn(fn, args=(world, out, free_port()), nprocs=world)


def equal(a, b, where="root"):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{where}: tensor vs {type(b).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        av = a.contiguous().reshape(-1).view(torch.uint8) if a.numel() else a
        bv = b.contiguous().reshape(-1).view(torch.uint8) if b.numel() else b
        if a.numel() and not torch.equal(av, bv):
            return f"{where}: tensor bytes differ"
        return None
    if type(a) is not type(b):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        if list(a.keys()) != list(b.keys()):
            return f"{where}: keys {list(a.keys())} vs {list(b.keys())}"
        for k in a:
            r = equal(a[k], b[k], f"{where}[{k!r}]")
            if r:
                return r
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            r = equal(x, y, f"{where}[{i}]")
            if r:
                return r
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def peak_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def report(start):
    import time

    print(f"elapsed: {time.perf_counter() - start:.3f} s")
    print(f"peak memory (VmHWM): {peak_kib()} KiB")


def main():
    import time

    cmd = sys.argv[1]
    if cmd == "fsdp":
        spawn(_fsdp_rank, int(sys.argv[3]), sys.argv[2])
    elif cmd == "dcp":
        out, world = sys.argv[2], int(sys.argv[3])
        if world == 1:
            import torch.distributed.checkpoint as dcp

            dcp.save(_dcp_state(), checkpoint_id=out, no_dist=True)
        else:
            spawn(_dcp_rank, world, out)
    elif cmd == "lightning":
        # lightning/fabric/utilities/consolidate_checkpoint.py's __main__.
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        start = time.perf_counter()
        torch.save(_load_distributed_checkpoint(Path(sys.argv[2])), sys.argv[3])
        report(start)
    elif cmd == "dcp_to_torch_save":
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        start = time.perf_counter()
        dcp_to_torch_save(sys.argv[2], sys.argv[3])
        report(start)
    elif cmd == "compare":
        a = torch.load(sys.argv[2], weights_only=False, mmap=True)
        b = torch.load(sys.argv[3], weights_only=False, mmap=True)
        r = equal(a, b)
        if r:
            print("DIFFERENT:", r)
            sys.exit(1)
        print("EQUAL")
    elif cmd == "load":
        ck = torch.load(sys.argv[2], weights_only=False)
        print("LOADED", sorted(ck.keys()))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
