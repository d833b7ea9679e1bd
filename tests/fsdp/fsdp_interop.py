"""Python side of the FSDP interop test (torch 2.11, lightning 2.6).

  fsdp_interop.py check_cpp <dir> <world>
      Checks the checkpoints the C++ reference run wrote on <world> ranks
      (<dir>/sharded_<world>, <dir>/full_<world>.pt, <dir>/ref_<world>.pt):
      torch.distributed.checkpoint loads the sharded folder in one process
      (no_dist) into a plain model and optimizer-state dict, dcp_to_torch_save
      converts it, Lightning's _load_distributed_checkpoint reads it with
      meta.pt, and torch.load reads the full file; everything bit-exact.

  fsdp_interop.py save_py <dir>
      Trains the same model with FSDP2 (fully_shard) on 2 Gloo ranks and
      saves {"model", "optimizer"} with dcp.save to <dir>/py_sharded, the
      gathered full tensors to <dir>/py_ref.pt.
"""

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

K_IN, K_WIDTH, K_OUT = 6, 9, 3


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = torch.nn.Linear(width, 2 * width + 1)
        self.fc2 = torch.nn.Linear(2 * width + 1, width)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


class Net(torch.nn.Module):
    """Names and shapes of tests/fsdp/fsdp_test_util.h's Net."""

    def __init__(self, blocks=3):
        super().__init__()
        self.inp = torch.nn.Linear(K_IN, K_WIDTH)
        for i in range(blocks):
            setattr(self, f"block{i}", Block(K_WIDTH))
        self.head = torch.nn.Linear(K_WIDTH, K_OUT)
        self.scale = torch.nn.Parameter(torch.tensor(1.25))
        self.register_buffer("running", torch.arange(K_OUT).float())
        self.n = blocks

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for i in range(self.n):
            h = getattr(self, f"block{i}")(h)
        return self.head(h) * self.scale + self.running


def same(a, b, what):
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
        raise AssertionError(f"{what}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}, "
                             f"max diff {(a.double() - b.double()).abs().max() if a.shape == b.shape else 'n/a'}")


def check_cpp(d, world):
    d = Path(d)
    folder, full, ref = d / f"sharded_{world}", d / f"full_{world}.pt", d / f"ref_{world}.pt"
    ref = torch.load(ref, weights_only=True)
    names = [k[2:] for k in ref if k.startswith("p.")]

    # 1. dcp.load into a plain model's state dict, in one process.
    model = Net()
    sd = model.state_dict()
    dcp.load({"model": sd}, checkpoint_id=str(folder), no_dist=True)
    model.load_state_dict(sd)
    for n in names:
        same(model.state_dict()[n], ref["p." + n], "dcp.load model." + n)
    same(model.running, torch.arange(K_OUT).float(), "buffer")

    # Optimizer state keyed by FQN, as FSDP.optim_state_dict makes it.
    osd = {"state": {n: {"exp_avg": torch.zeros_like(ref["p." + n]),
                         "exp_avg_sq": torch.zeros_like(ref["p." + n]),
                         "step": torch.tensor(0.0)} for n in names}}
    dcp.load({"optimizer": osd}, checkpoint_id=str(folder), no_dist=True)
    for n in names:
        for k in ("exp_avg", "exp_avg_sq"):
            same(osd["state"][n][k], ref[f"{k}.{n}"], f"dcp.load optimizer.state.{n}.{k}")
        same(osd["state"][n]["step"], ref["step." + n], f"step of {n}")

    # 2. dcp_to_torch_save: the whole nested state.
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    out = d / f"converted_{world}.pt"
    dcp_to_torch_save(str(folder), str(out))
    conv = torch.load(out, weights_only=False)
    for n in names:
        same(conv["model"][n], ref["p." + n], "converted model." + n)
        same(conv["optimizer"]["state"][n]["exp_avg"], ref["exp_avg." + n], "converted exp_avg")
    groups = conv["optimizer"]["param_groups"]
    assert groups[0]["params"] == names, groups[0]["params"]
    assert abs(groups[0]["lr"] - 1e-2) < 1e-12 and abs(groups[0]["weight_decay"] - 0.05) < 1e-12, groups
    # A Python optimizer accepts the converted state once params are indices.
    m2 = Net()
    m2.load_state_dict(conv["model"])
    opt = torch.optim.AdamW(m2.parameters(), lr=0.5)
    index = {n: i for i, n in enumerate(n for n, _ in m2.named_parameters())}
    opt.load_state_dict({
        "state": {index[n]: s for n, s in conv["optimizer"]["state"].items()},
        "param_groups": [dict(g, params=[index[p] for p in g["params"]]) for g in groups],
    })
    assert opt.param_groups[0]["lr"] == 1e-2

    # 3. Lightning reads the folder (with meta.pt) as a sharded checkpoint.
    from lightning.fabric.strategies.fsdp import _is_sharded_checkpoint
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    assert _is_sharded_checkpoint(folder)
    ck = _load_distributed_checkpoint(folder)
    assert ck["step"] == 3, ck["step"]
    assert ck["extra"]["note"] == "hello"
    same(ck["extra"]["t"], torch.arange(3).float(), "extra.t")
    for n in names:
        same(ck["model"][n], ref["p." + n], "lightning model." + n)

    # 4. The full checkpoint is a plain torch.save file.
    f = torch.load(full, weights_only=True)
    m3 = Net()
    m3.load_state_dict(f["model"], strict=True)
    for n in names:
        same(m3.state_dict()[n], ref["p." + n], "full model." + n)
        same(f["optimizer"]["state"][n]["exp_avg_sq"], ref["exp_avg_sq." + n], "full exp_avg_sq")
    assert f["optimizer"]["param_groups"][0]["params"] == names
    assert f["step"] == 3 and f["extra"]["note"] == "hello"
    print(f"python: checkpoints of the {world}-rank C++ run load bit-exact "
          f"(dcp.load, dcp_to_torch_save, lightning, torch.load)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_rank(rank, world, port, d):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(3)
    model = Net()
    # FSDP2 refuses 0-dim parameters: `scale` stays replicated (every rank
    # sees the same batch, so its replicas stay identical).
    for i in range(model.n):
        fully_shard(getattr(model, f"block{i}"))
    fully_shard(model, ignored_params={model.scale})
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.03)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        x, y = torch.randn(8, K_IN, generator=g), torch.randn(8, K_OUT, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    msd = get_model_state_dict(model)
    osd = get_optimizer_state_dict(model, opt)
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(Path(d) / "py_sharded"))
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    fm = get_model_state_dict(model, options=full)
    fo = get_optimizer_state_dict(model, opt, options=full)
    if rank == 0:
        ref = {}
        for n, t in fm.items():
            if n == "running":
                continue
            ref["p." + n] = t
            ref["exp_avg." + n] = fo["state"][n]["exp_avg"]
            ref["exp_avg_sq." + n] = fo["state"][n]["exp_avg_sq"]
            ref["step." + n] = fo["state"][n]["step"]
        torch.save(ref, Path(d) / "py_ref.pt")
    dist.barrier()
    dist.destroy_process_group()


def main():
    mode = sys.argv[1]
    if mode == "check_cpp":
        check_cpp(sys.argv[2], int(sys.argv[3]))
    elif mode == "save_py":
        mp.spawn(save_rank, args=(2, free_port(), sys.argv[2]), nprocs=2)
        print("python: saved a 2-rank FSDP2 checkpoint")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
