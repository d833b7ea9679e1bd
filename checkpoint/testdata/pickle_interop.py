"""Python side of checkpoint/pickle_test.cc.

  dump DIR      writes DIR/py_p{2,4,5}.pkl (pickle.dumps of structure() plus
                sets), DIR/torch_data.pkl (the data.pkl of a real torch.save
                file) and DIR/torch_expect.pkl (what the test should find in it).
  check FILE P  loads FILE (written by the C++ pickler with protocol P) and
                checks it equals structure(), strictly (types included).
  tensors FILE  loads FILE (tensors written by the C++ pickler) the way
                torch.load does and checks every tensor.
Prints OK on success; fails with a message otherwise.
"""
import collections
import io
import math
import os
import pickle
import sys
import zipfile


def structure():
    shared = [1, 2]
    return {
        "none": None,
        "t": True,
        "f": False,
        "ints": [0, 1, -1, 255, 256, 65535, 65536, -65536, 2**31 - 1, -2**31, 2**31,
                 -2**31 - 1, 2**40, -2**40, 2**63 - 1, -2**63, 10**15],
        "floats": [0.0, -0.0, 1.5, -2.25, 1e-300, 1e300, 3.141592653589793,
                   float("inf"), float("-inf")],
        "strings": ["", "ascii", "h\u00e9llo w\u00f6rld", "\u65e5\u672c\u8a9e",
                    "emoji \U0001F600", "x" * 300, "new\nline"],
        "bytes": [b"", b"\x00\x01\xff", bytes(range(256)) * 2],
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4, "five")],
        "nested": {"a": [{"b": (1, [2, {"c": None}])}]},
        7: "int key",
        -3: [1.0],
        "big_list": list(range(2500)),
        "big_dict": {"k%d" % i: i for i in range(2500)},
        "od": collections.OrderedDict([("z", 1), ("a", 2)]),
        "shared": [shared, shared],
        "empty": [[], {}, ()],
    }


def with_sets():
    s = structure()
    s["set"] = {5}
    s["fset"] = frozenset([6])
    return s


def same(a, b, path="root"):
    """Strict equality: types must match too (bool is not int, tuple is not list)."""
    ta, tb = type(a), type(b)
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a.keys()) != list(b.keys()):
            raise AssertionError("%s: keys %r != %r" % (path, list(a)[:10], list(b)[:10]))
        for k in a:
            same(a[k], b[k], "%s[%r]" % (path, k))
        return
    if ta is not tb:
        raise AssertionError("%s: type %s != %s" % (path, ta.__name__, tb.__name__))
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            raise AssertionError("%s: len %d != %d" % (path, len(a), len(b)))
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, "%s[%d]" % (path, i))
        return
    if isinstance(a, float):
        if not (a == b and math.copysign(1, a) == math.copysign(1, b)):
            raise AssertionError("%s: %r != %r" % (path, a, b))
        return
    if a != b:
        raise AssertionError("%s: %r != %r" % (path, a, b))


def dump(out_dir):
    for proto in (2, 4, 5):
        with open(os.path.join(out_dir, "py_p%d.pkl" % proto), "wb") as f:
            f.write(pickle.dumps(with_sets(), protocol=proto))

    import torch
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32)
    sd = {
        "f32": torch.randn(3, 4),
        "bf16": torch.randn(5, dtype=torch.bfloat16),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "view": base.reshape(4, 6)[1:, ::2],
        "shared_a": base[:12].view(3, 4),
        "shared_b": base[12:],
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "u16": torch.zeros(3, dtype=torch.uint16),
        "nested": {"list": [torch.tensor(1.5)], "step": 10},
    }
    buf = io.BytesIO()
    torch.save(sd, buf)
    zf = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    names = zf.namelist()
    prefix = names[0].split("/")[0] + "/"
    with open(os.path.join(out_dir, "torch_data.pkl"), "wb") as f:
        f.write(zf.read(prefix + "data.pkl"))
    records = {n[len(prefix + "data/"):]: zf.getinfo(n).file_size
               for n in names if n.startswith(prefix + "data/")}

    def describe(t):
        return {
            "dtype": str(t.dtype).replace("torch.", ""),
            "offset": t.storage_offset(),
            "size": list(t.size()),
            "stride": list(t.stride()),
            "requires_grad": t.requires_grad,
            "storage_nbytes": t.untyped_storage().nbytes(),
            "storage_ptr": t.untyped_storage().data_ptr(),
        }

    tensors = {k: describe(v) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    tensors["nested.list.0"] = describe(sd["nested"]["list"][0])
    ptrs = sorted({d["storage_ptr"] for d in tensors.values()})
    for d in tensors.values():
        d["storage_group"] = ptrs.index(d.pop("storage_ptr"))
    with open(os.path.join(out_dir, "torch_expect.pkl"), "wb") as f:
        pickle.dump({"tensors": tensors, "records": records}, f, protocol=2)


def check(path, proto):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != bytes([0x80, int(proto)]):
        raise AssertionError("header %r" % data[:2])
    same(pickle.loads(data), structure())


def tensors(path):
    import torch

    class Unpickler(pickle.Unpickler):
        # As torch.load: a persistent id names a storage of `numel` elements of
        # the storage class's dtype (bytes for UntypedStorage).
        def persistent_load(self, pid):
            typename, storage_type, key, location, numel = pid
            assert typename == "storage" and location == "cpu", pid
            dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            raw = (torch.arange(nbytes, dtype=torch.int64) % 251).to(torch.uint8)
            return torch.storage.TypedStorage(
                wrap_storage=raw.untyped_storage(), dtype=dtype, _internal=True)

    with open(path, "rb") as f:
        obj = Unpickler(f).load()
    expect = {
        # name: (dtype, storage numel, offset, size, stride, requires_grad)
        "a": (torch.float32, 24, 6, (3, 3), (6, 2), False),
        "b": (torch.bfloat16, 4, 0, (2, 2), (2, 1), True),
        "c": (torch.uint16, 5, 0, (5,), (1,), False),
        "t": (torch.int64, 6, 0, (3, 2), (1, 3), False),
        "e": (torch.float64, 0, 0, (0, 3), (3, 1), False),
    }
    assert sorted(obj) == sorted(expect), sorted(obj)
    for name, (dtype, numel, offset, size, stride, rg) in expect.items():
        t = obj[name]
        assert isinstance(t, torch.Tensor), (name, type(t))
        assert t.dtype == dtype, (name, t.dtype)
        assert t.storage_offset() == offset and tuple(t.size()) == size, (name, t.size())
        assert tuple(t.stride()) == stride, (name, t.stride())
        assert t.requires_grad == rg, (name, t.requires_grad)
        nbytes = numel * t.element_size()
        assert t.untyped_storage().nbytes() == nbytes, (name, t.untyped_storage().nbytes())
        raw = (torch.arange(nbytes, dtype=torch.int64) % 251).to(torch.uint8)
        want = raw.view(dtype).as_strided(size, stride, offset)
        assert torch.equal(t.detach(), want), name


def main():
    mode = sys.argv[1]
    if mode == "dump":
        dump(sys.argv[2])
    elif mode == "check":
        check(sys.argv[2], sys.argv[3])
    elif mode == "tensors":
        tensors(sys.argv[2])
    else:
        raise SystemExit("unknown mode " + mode)
    print("OK")


if __name__ == "__main__":
    main()
