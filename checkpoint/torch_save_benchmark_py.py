"""Python reference for torch_save_benchmark: torch.load and torch.save of the
same state the C++ benchmark wrote, timed the same way (cold page cache for
loads, fsync included for saves). Prints one JSON line."""
import json
import os
import sys
import time

import torch

src, dst = sys.argv[1], sys.argv[2]


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


drop_cache(src)
t0 = time.perf_counter()
state = torch.load(src, weights_only=True)
load_s = time.perf_counter() - t0

# Start from no file, so that Python does not pay for freeing the previous
# run's blocks (slow where the filesystem discards them) inside its timing.
if os.path.exists(dst):
    os.unlink(dst)
t0 = time.perf_counter()
with open(dst, "wb") as f:
    torch.save(state, f)
    f.flush()
    os.fsync(f.fileno())
save_s = time.perf_counter() - t0
print(json.dumps({"torch_load_s": load_s, "torch_save_s": save_s}))
