"""Python's FSDP (torch.distributed.fsdp.fully_shard, FSDP2) on Lightning's
demo Transformer, on CPU ranks over Gloo: the reference that
//trainers:fsdp_1b_benchmark compares fsdp_train's steps per second with.
Same model (each encoder and decoder layer its own unit, the root the rest),
same batch shape, AdamW, same number of threads per rank.

Usage: fsdp_benchmark.py --preset=1b --vocab_file=valid.txt --batch_size=1 --steps=4"""
import argparse
import os
import resource
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PRESETS = {
    "tiny": dict(ninp=32, nhead=2, nhid=64, nlayers=2),
    "demo": dict(ninp=200, nhead=2, nhid=200, nlayers=2),
    "1b": dict(ninp=1024, nhead=64, nhid=4096, nlayers=32),
}


def vocab_size(path):
    # The demo's tokenization: whitespace-split lines, each followed by <eos>.
    words = {"<eos>"}
    with open(path, encoding="utf8") as f:
        for line in f:
            words.update(line.split())
    return len(words)


def run(rank, world, args, port, vocab):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(max(1, os.cpu_count() // world))
    from torch.distributed.fsdp import fully_shard
    from lightning.pytorch.demos.transformer import Transformer

    torch.manual_seed(42)
    model = Transformer(vocab_size=vocab, dropout=0.2, **PRESETS[args.preset])
    for layer in list(model.transformer.encoder.layers) + list(model.transformer.decoder.layers):
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(rank)
    times = []
    for step in range(args.steps):
        x = torch.randint(0, vocab, (args.batch_size, args.block_size), generator=g)
        y = torch.randint(0, vocab, (args.batch_size, args.block_size), generator=g)
        t0 = time.perf_counter()
        opt.zero_grad()
        out = model(x, y)
        loss = torch.nn.functional.nll_loss(out, y.view(-1))
        loss.backward()
        opt.step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
        if rank == 0:
            print(f"python fsdp step {step + 1}/{args.steps} | loss {loss.item():.4f} | "
                  f"{times[-1]:.3f} s/step", flush=True)
    timed = times[1:] or times
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20])
    peaks = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(peaks, peak)
    if rank == 0:
        tokens = args.batch_size * args.block_size * world
        s = sum(timed) / len(timed)
        print(f"python fsdp summary: {len(times)} steps ({len(timed)} timed) | {s:.3f} s/step | "
              f"{1 / s:.3f} steps/s | {tokens / s:.0f} tok/s | peak rss: "
              + ", ".join(f"rank {r} {p.item():.2f} GiB" for r, p in enumerate(peaks)),
              flush=True)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="1b")
    p.add_argument("--vocab_file", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--block_size", type=int, default=35)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--port", type=int, default=29731)
    args = p.parse_args()
    vocab = vocab_size(args.vocab_file)
    print(f"python fsdp: torch {torch.__version__}, preset {args.preset}, vocab {vocab}, "
          f"{args.devices} CPU ranks (gloo)", flush=True)
    mp.spawn(run, args=(args.devices, args, args.port, vocab), nprocs=args.devices)


if __name__ == "__main__":
    main()
