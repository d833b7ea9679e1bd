"""Python DCP side of fsdp_checkpoint_benchmark: the same model (a stack of
Linear(width, width) layers, each its own FSDP2 unit) with AdamW state, on 2
Gloo ranks; times dcp.save and dcp.load of {"model", "optimizer"} and prints
one line per measure ("py_save_s=..." etc.) for the C++ driver.

  fsdp_checkpoint_benchmark.py <dir> <layers> <width> [<loads to time, median printed>]
"""

import os
import resource
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp


def rank_main(rank, world, port, folder, layers, width, repeat):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(4, width)).square().mean().backward()
    opt.step()
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, opt)}
    dist.barrier()
    t0 = time.perf_counter()
    dcp.save(state, checkpoint_id=folder)
    dist.barrier()
    save_s = time.perf_counter() - t0
    loads = []
    for _ in range(repeat):  # each cold; the median is reported
        os.system("sync")
        dist.barrier()
        if rank == 0:  # evict the files from the page cache, as the C++ side does
            for name in os.listdir(folder):
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
        dist.barrier()
        t0 = time.perf_counter()
        dcp.load(state, checkpoint_id=folder)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optimizer"])
        dist.barrier()
        loads.append(time.perf_counter() - t0)
    load_s = sorted(loads)[len(loads) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if rank == 0:
        print(f"py_save_s={save_s:.3f}")
        print(f"py_load_s={load_s:.3f}")
        print("py_loads_s=" + ",".join(f"{x:.3f}" for x in loads))
        print(f"py_peak_rss_rank0={peak}")
    dist.destroy_process_group()


def main():
    folder, layers, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    repeat = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(2, port, folder, layers, width, repeat), nprocs=2)


if __name__ == "__main__":
    main()
