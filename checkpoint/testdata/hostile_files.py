"""Writes hostile checkpoints for checkpoint/hostile_files_test.cc.

    python hostile_files.py OUT_DIR MARKER

Every payload would create the file MARKER if it ran. For each file this
script proves the payload is real and reports what PyTorch does with it:
  EXECUTES <name>   plain pickle.load / torch.load(weights_only=False) ran it
  REFUSED <name>    torch.load(weights_only=True) (or its unpickler) refused it
The marker is removed again before the script exits, so the C++ test can
check that our readers never create it.
"""
import io
import os
import pickle
import shutil
import subprocess
import sys
import warnings

import torch
import torch.distributed.checkpoint as dcp
from torch import _weights_only_unpickler

out, marker = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
warnings.simplefilter("ignore")


class SystemCall:
    def __reduce__(self):
        return (os.system, (f"touch {marker}",))


class EvalCall:
    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {marker}')",))


class SubprocessCall:
    def __reduce__(self):
        return (subprocess.call, (["touch", marker],))


class Config:  # a plain user class: weights_only=True refuses it
    def __init__(self):
        self.lr = 0.5


def check(name, data, loader):
    """Records whether the payload runs under `loader` and whether the
    weights-only unpickler refuses it."""
    if os.path.exists(marker):
        os.remove(marker)
    try:
        loader(data)
    except Exception:
        pass
    if os.path.exists(marker):
        print("EXECUTES", name)
        os.remove(marker)
    try:
        _weights_only_unpickler.load(io.BytesIO(data))
        print("ACCEPTED", name)
    except Exception:
        print("REFUSED", name)


def write(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    return data


pickle_load = lambda b: pickle.loads(b)


def torch_load_unsafe(b):
    return torch.load(io.BytesIO(b), weights_only=False)


def torch_load_safe(name, b):
    try:
        torch.load(io.BytesIO(b), weights_only=True)
        print("ACCEPTED_TORCH", name)
    except Exception:
        print("REFUSED_TORCH", name)


# Raw pickles: GLOBAL + REDUCE (protocol 2), STACK_GLOBAL (protocol 4), INST
# (protocol 0, hand-written as CPython's pickler no longer emits it).
check("reduce_os_system.pkl", write("reduce_os_system.pkl", pickle.dumps(SystemCall(), 2)),
      pickle_load)
check("reduce_eval.pkl", write("reduce_eval.pkl", pickle.dumps(EvalCall(), 2)), pickle_load)
check("stack_global_subprocess.pkl",
      write("stack_global_subprocess.pkl", pickle.dumps(SubprocessCall(), 4)), pickle_load)
inst = b"(S'touch " + marker.encode() + b"'\nios\nsystem\n."
check("inst_os_system.pkl", write("inst_os_system.pkl", inst), pickle_load)
check("user_class.pkl", write("user_class.pkl", pickle.dumps({"cfg": Config()}, 2)), pickle_load)

# torch.save files: a real state dict with the payload beside the tensors.
for name, payload in [("evil_system.pt", SystemCall()), ("evil_eval.pt", EvalCall()),
                      ("evil_subprocess.pt", SubprocessCall()), ("user_class.pt", Config())]:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0), "x": payload}, buf)
    data = write(name, buf.getvalue())
    if os.path.exists(marker):
        os.remove(marker)
    try:
        torch_load_unsafe(data)
    except Exception:
        pass
    if os.path.exists(marker):
        print("EXECUTES", name)
        os.remove(marker)
    torch_load_safe(name, data)

# A DCP folder whose .metadata is hostile: DCP's FileSystemReader reads it
# with plain pickle.load.
d = os.path.join(out, "dcp_evil")
dcp.save({"w": torch.arange(4.0)}, checkpoint_id=d, no_dist=True)
with open(os.path.join(d, ".metadata"), "wb") as f:
    pickle.dump(SystemCall(), f, protocol=4)
try:
    dcp.load({"w": torch.zeros(4)}, checkpoint_id=d, no_dist=True)
except BaseException:  # DCP's CheckpointException is not an Exception
    pass
if os.path.exists(marker):
    print("EXECUTES dcp_evil")
    os.remove(marker)
