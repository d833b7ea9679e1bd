"""Python side of dcp_metadata_test: checks our .metadata pickles with real torch.

  check <in.metadata> <out.metadata>
      pickle.load our file, assert every field has the class Python's
      FileSystemWriter gives it, and re-pickle it (pickle.dump, as torch does)
      into <out.metadata> for the C++ side to compare.
  make <out.metadata>
      build a Metadata with every feature by hand (as torch 2.11 would) and
      pickle it.
"""
import dataclasses
import pathlib
import pickle
import sys

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)


def check_size(x, what):
    assert type(x) is torch.Size, f"{what}: {type(x)} is not torch.Size"


def check(path_in, path_out):
    with open(path_in, "rb") as f:
        md = pickle.load(f)
    assert type(md) is Metadata, type(md)
    assert isinstance(md.state_dict_metadata, dict)
    for k, v in md.state_dict_metadata.items():
        assert isinstance(k, str)
        if isinstance(v, BytesStorageMetadata):
            continue
        assert type(v) is TensorStorageMetadata, (k, type(v))
        p = v.properties
        assert type(p) is TensorProperties, (k, type(p))
        assert isinstance(p.dtype, torch.dtype), (k, p.dtype)
        assert p.layout == torch.strided, (k, p.layout)
        assert p.memory_format in (torch.contiguous_format, torch.channels_last,
                                   torch.preserve_format), (k, p.memory_format)
        assert type(p.requires_grad) is bool and type(p.pin_memory) is bool
        check_size(v.size, k)
        assert type(v.chunks) is list
        for c in v.chunks:
            assert type(c) is ChunkStorageMetadata
            check_size(c.offsets, k)
            check_size(c.sizes, k)
    assert isinstance(md.storage_data, dict)
    for idx, info in md.storage_data.items():
        assert type(idx) is MetadataIndex, type(idx)
        if idx.offset is not None:
            check_size(idx.offset, idx.fqn)
        assert type(info) is _StorageInfo, type(info)
        assert isinstance(info.relative_path, str)
        assert type(info.offset) is int and type(info.length) is int
        # Lookups by a fresh index (hint ignored) must work, as the reader does.
        assert md.storage_data[MetadataIndex(idx.fqn, idx.offset)] is info
    if md.planner_data is not None:
        for k, path in md.planner_data.items():
            assert type(path) is tuple, (k, path)
    if md.storage_meta is not None:
        sm = md.storage_meta
        assert type(sm) is StorageMeta
        assert sm.checkpoint_id is None or isinstance(sm.checkpoint_id, pathlib.PurePath)
        assert type(sm.modules) is list
    # Dataclass equality of a deep copy through pickle: nothing lost.
    again = pickle.loads(pickle.dumps(md))
    assert again == md
    with open(path_out, "wb") as f:
        pickle.dump(md, f)
    print("OK", len(md.state_dict_metadata), len(md.storage_data))


def make(path_out):
    props = TensorProperties.create_from_tensor(torch.empty(1, dtype=torch.bfloat16))
    md = Metadata(
        state_dict_metadata={
            "model.w": TensorStorageMetadata(
                properties=TensorProperties(dtype=torch.float32),
                size=torch.Size([4, 6]),
                chunks=[
                    ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([4, 3])),
                    ChunkStorageMetadata(torch.Size([0, 3]), torch.Size([4, 3])),
                ],
            ),
            "model.b": TensorStorageMetadata(
                properties=TensorProperties(dtype=torch.bfloat16, requires_grad=True,
                                            memory_format=torch.channels_last),
                size=torch.Size([5]),
                chunks=[ChunkStorageMetadata(torch.Size([0]), torch.Size([5]))],
            ),
            "optimizer.state.0.step": TensorStorageMetadata(
                properties=props, size=torch.Size([]),
                chunks=[ChunkStorageMetadata(torch.Size([]), torch.Size([]))]),
            "epoch": BytesStorageMetadata(),
        },
        planner_data={
            "model.w": ("model", "w"),
            "model.b": ("model", "b"),
            "optimizer.state.0.step": ("optimizer", "state", "0", "step"),
            "epoch": ("epoch",),
        },
    )
    md.storage_data = {
        MetadataIndex("epoch"): _StorageInfo("__0_0.distcp", 0, 100),
        MetadataIndex("model.w", [0, 0], 0): _StorageInfo("__0_0.distcp", 100, 200),
        MetadataIndex("model.w", [0, 3], 1): _StorageInfo("__1_0.distcp", 0, 200),
        MetadataIndex("model.b", [0], 0): _StorageInfo(
            "__0_0.distcp", 300, 50, transform_descriptors=["zstd"]),
        MetadataIndex("optimizer.state.0.step", [], 0): _StorageInfo("__0_0.distcp", 350, 7),
    }
    md.storage_meta = StorageMeta(checkpoint_id=pathlib.PosixPath("/tmp/some/ckpt"),
                                  save_id="abc", modules=["m1"])
    md.version = "1.0.0"
    with open(path_out, "wb") as f:
        pickle.dump(md, f)
    print("OK")


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
