"""Python torch.distributed (Gloo) twin of allreduce_benchmark.cc.

Runs 2 ranks on 127.0.0.1 and prints, from rank 0, machine-readable lines:
  allreduce <bytes> <seconds per all-reduce>
  ddp <steps per second>
with the same sizes, iteration rule, model and batch as the C++ side.
"""

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, min_seconds, min_iters):
    for _ in range(2):
        fn()
    iters, start = 0, time.perf_counter()
    while True:
        fn()
        iters += 1
        elapsed = time.perf_counter() - start
        # Every rank must run the same number of iterations: rank 0 decides.
        done = torch.tensor([1 if (iters >= min_iters and elapsed >= min_seconds) else 0])
        dist.broadcast(done, 0)
        if done.item():
            return elapsed / iters


def worker(rank, world, port, sizes_mib, min_seconds, ddp_steps, hidden, batch):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    for mib in sizes_mib:
        t = torch.ones(mib * 1024 * 1024 // 4)
        per = timed(lambda: dist.all_reduce(t), min_seconds, 3)
        if rank == 0:
            print(f"allreduce {t.numel() * 4} {per:.9f}", flush=True)

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x = torch.randn(batch, 256)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(ddp_steps):
        step()
    dist.barrier()
    if rank == 0:
        print(f"ddp {ddp_steps / (time.perf_counter() - start):.3f}", flush=True)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes_mib", default="1,4,16,64,256")
    parser.add_argument("--min_seconds", type=float, default=1.0)
    parser.add_argument("--ddp_steps", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mib.split(",") if s]
    mp.spawn(worker, args=(2, free_port(), sizes, args.min_seconds, args.ddp_steps,
                           args.hidden, args.batch), nprocs=2)


if __name__ == "__main__":
    main()
