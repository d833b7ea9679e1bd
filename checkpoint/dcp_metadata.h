// The `.metadata` file of a PyTorch distributed checkpoint (DCP).
//
// A DCP checkpoint is a folder: one `__<rank>_0.distcp` file per rank holding
// that rank's chunks, and `.metadata`, a Python pickle of
// torch.distributed.checkpoint.metadata.Metadata that maps every key of the
// flattened state dict to its global shape and chunks, and every chunk to a
// byte range of a `.distcp` file. These structs mirror the Python dataclasses
// field by field; ToValue/FromValue convert them to and from the pickled
// object tree with exactly the classes, module paths and field layouts that
// torch 2.11's FileSystemWriter writes, so Python reads our `.metadata` and
// we read Python's. docs/sharded-format.md describes the format.
#ifndef FABRIC_CHECKPOINT_DCP_METADATA_H_
#define FABRIC_CHECKPOINT_DCP_METADATA_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/state_dict_flatten.h"
#include "checkpoint/value.h"

namespace fabric::dcp {

// File names inside a checkpoint folder.
inline constexpr char kMetadataFileName[] = ".metadata";
// `__<rank>_<n>.distcp`; FileSystemWriter's default writes n = 0 only.
std::string RankFileName(int rank, int file_index = 0);

// metadata._MEM_FORMAT_ENCODING, the pickled stand-in for a memory format.
enum class MemoryFormat : int { kContiguous = 0, kChannelsLast = 1, kPreserve = 2 };

// metadata.TensorProperties. Pickled through its __getstate__ as the tuple
// (dtype, layout, requires_grad, _MEM_FORMAT_ENCODING(n), pin_memory).
struct TensorProperties {
  at::ScalarType dtype = at::kFloat;
  std::string layout = "torch.strided";  // deprecated in torch; kept as written
  bool requires_grad = false;
  MemoryFormat memory_format = MemoryFormat::kContiguous;
  bool pin_memory = false;

  bool operator==(const TensorProperties& o) const {
    return dtype == o.dtype && layout == o.layout && requires_grad == o.requires_grad &&
           memory_format == o.memory_format && pin_memory == o.pin_memory;
  }
};

// metadata.ChunkStorageMetadata: a box of the global tensor (torch.Size
// offsets and sizes, one entry per dimension; both empty for a 0-dim tensor).
struct ChunkStorageMetadata {
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;

  int64_t numel() const;
  bool operator==(const ChunkStorageMetadata& o) const {
    return offsets == o.offsets && sizes == o.sizes;
  }
};

// metadata.TensorStorageMetadata: a tensor key, its global size and the
// chunks the ranks saved (which together cover it, without overlap).
struct TensorStorageMetadata {
  TensorProperties properties;
  std::vector<int64_t> size;
  std::vector<ChunkStorageMetadata> chunks;

  bool operator==(const TensorStorageMetadata& o) const {
    return properties == o.properties && size == o.size && chunks == o.chunks;
  }
};

// metadata.BytesStorageMetadata: a non-tensor value, saved as a torch.save blob.
struct BytesStorageMetadata {
  bool operator==(const BytesStorageMetadata&) const { return true; }
};

using StorageMetadata = std::variant<TensorStorageMetadata, BytesStorageMetadata>;

// metadata.MetadataIndex: the key of one saved item. `offset` is the chunk's
// offsets for tensors, absent for bytes. `index` is only a lookup hint (the
// chunk's position in TensorStorageMetadata::chunks); Python's equality and
// hash ignore it, and so does operator== here.
struct MetadataIndex {
  std::string fqn;
  std::optional<std::vector<int64_t>> offset;
  std::optional<int64_t> index;

  bool operator==(const MetadataIndex& o) const { return fqn == o.fqn && offset == o.offset; }
};

// filesystem._StorageInfo: where an item's bytes are, relative to the folder.
struct StorageInfo {
  std::string relative_path;
  int64_t offset = 0;
  int64_t length = 0;
  // Stream transforms (experimental in torch); absent when none, in which
  // case the field is left out of the pickle as torch does.
  std::optional<std::vector<std::string>> transform_descriptors;
  // Ours, not PyTorch's: the CRC-32 of all `length` bytes of the item (its
  // whole torch.save archive: headers, data, directory), pickled as the extra
  // attribute `fabric_crc32`, which Python's unpickler sets and DCP ignores.
  // Loads check it; folders written by Python have none.
  std::optional<uint32_t> item_crc32;

  bool operator==(const StorageInfo& o) const {
    return relative_path == o.relative_path && offset == o.offset && length == o.length &&
           transform_descriptors == o.transform_descriptors && item_crc32 == o.item_crc32;
  }
};

// metadata.StorageMeta. FileSystemWriter stores checkpoint_id as a
// pathlib.PosixPath of the folder; we write it the same way and read either a
// path or a plain string.
struct StorageMeta {
  std::optional<std::string> checkpoint_id;
  std::optional<std::string> save_id;
  std::optional<std::string> load_id;
  std::vector<std::string> modules;

  bool operator==(const StorageMeta& o) const {
    return checkpoint_id == o.checkpoint_id && save_id == o.save_id && load_id == o.load_id &&
           modules == o.modules;
  }
};

// metadata.Metadata. Maps keep the order they were written in.
struct Metadata {
  std::vector<std::pair<std::string, StorageMetadata>> state_dict_metadata;
  // DefaultSavePlanner's planner_data: flattened key -> path in the original
  // nested dict (flatten_state_dict's mapping). nullopt pickles as None.
  std::optional<std::vector<std::pair<std::string, ObjectPath>>> planner_data;
  // planner_data that is neither None nor such a mapping (a custom planner's);
  // written back unchanged when set.
  std::optional<Value> planner_data_other;
  std::vector<std::pair<MetadataIndex, StorageInfo>> storage_data;
  std::optional<StorageMeta> storage_meta;
  std::optional<std::string> version;  // "1.0.0" for torch 2.11

  // Linear lookups (use an index for many lookups, as the reader does).
  const StorageMetadata* Find(const std::string& fqn) const;
  const StorageInfo* FindStorage(const MetadataIndex& index) const;
};

// The DCP format version FileSystemWriter writes into Metadata::version.
inline constexpr char kCurrentVersion[] = "1.0.0";

// Metadata <-> the Python object tree (kObject instances of the dataclasses).
absl::StatusOr<Value> ToValue(const Metadata& metadata);
// `what` names the source in errors, e.g. "ckpt/.metadata".
absl::StatusOr<Metadata> FromValue(const Value& value, const std::string& what);

// The bytes of a `.metadata` file (pickle protocol 4, as pickle.dump writes
// it) and back. ParseMetadata never crashes on bad input.
absl::StatusOr<std::string> SerializeMetadata(const Metadata& metadata);
absl::StatusOr<Metadata> ParseMetadata(std::string_view bytes, const std::string& what);

}  // namespace fabric::dcp

#endif  // FABRIC_CHECKPOINT_DCP_METADATA_H_
