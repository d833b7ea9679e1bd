"""Exit 0 when two torch.save files hold the same objects, bit for bit.

  same_checkpoint.py A B

torch.save files are not byte-identical from one save to the next (each gets
a random serialization id), so the crash test compares what torch.load reads.
"""
import sys

import torch


def same(a, b, where):
    if type(a) is not type(b):
        return f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        # Bytes, not values: NaN == NaN and -0.0 != 0.0 here.
        if not torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                           b.contiguous().reshape(-1).view(torch.uint8)):
            return f"{where}: tensor values differ"
        return None
    if isinstance(a, dict):
        if list(a.keys()) != list(b.keys()):
            return f"{where}: keys differ"
        for k in a:
            d = same(a[k], b[k], f"{where}/{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            d = same(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def main():
    a = torch.load(sys.argv[1], weights_only=True)
    b = torch.load(sys.argv[2], weights_only=True)
    d = same(a, b, "")
    if d:
        print(f"{sys.argv[1]} and {sys.argv[2]} differ at {d}")
        sys.exit(1)


if __name__ == "__main__":
    main()
