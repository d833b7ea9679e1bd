// Writing a PyTorch distributed checkpoint (DCP) folder, as torch 2.11's
// FileSystemWriter does.
//
// Every rank writes its own items to `<dir>/__<rank>_0.distcp` with
// WriteRankFile: one self-contained torch.save zip archive per item, placed
// back to back (bytes items first, then tensors, as FileSystemWriter orders
// them). Rank 0 then gathers every rank's WriteResults, builds the Metadata
// (BuildMetadata) and writes `.metadata` last (WriteMetadata): a folder
// without `.metadata` is an incomplete checkpoint. This layer does no
// communication; the strategy moves WriteResults between ranks
// (EncodeWriteResults / DecodeWriteResults give a byte form for that).
//
// A typical save:
//   all ranks: PrepareCheckpointDir(dir) on rank 0, barrier;
//              results = WriteRankFile(dir, rank, items); gather results;
//   rank 0:    md = BuildMetadata(all_results, planner_data, storage_meta);
//              WriteMetadata(dir, md); RemoveStaleRankFiles(dir, world_size).
#ifndef FABRIC_CHECKPOINT_DCP_WRITER_H_
#define FABRIC_CHECKPOINT_DCP_WRITER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/value.h"

namespace fabric::dcp {

// One item of a rank's share of the flattened state dict.
struct WriteItem {
  std::string fqn;  // the flattened key, e.g. "model.layer.weight"
  // Where the key sits in the nested state dict (planner_data); empty means
  // the one-element path (fqn).
  ObjectPath path;

  // A tensor item: the local chunk (any device, any strides; it is written
  // contiguous from CPU memory), where it sits in the global tensor (empty =
  // all zeros) and the global size (empty = the chunk's own size).
  at::Tensor tensor;
  std::vector<int64_t> offsets;
  std::vector<int64_t> global_size;

  // A bytes item (tensor undefined): either a ready torch.save blob, or a
  // value that is torch.save'd straight into the file.
  std::optional<std::string> blob;
  std::optional<Value> value;

  static WriteItem Tensor(std::string fqn, at::Tensor tensor);
  static WriteItem Shard(std::string fqn, at::Tensor tensor, std::vector<int64_t> offsets,
                         std::vector<int64_t> global_size);
  static WriteItem Blob(std::string fqn, std::string torch_save_bytes);
  static WriteItem Object(std::string fqn, Value value);

  bool is_tensor() const { return tensor.defined(); }
};

// What one written item contributes to the global Metadata.
struct WriteResult {
  MetadataIndex index;  // fqn and, for tensors, the chunk offsets
  StorageInfo storage;  // file, offset and length of its archive
  ObjectPath path;      // for planner_data
  bool is_tensor = false;
  // Tensor items only:
  TensorProperties properties;
  std::vector<int64_t> global_size;
  std::vector<int64_t> chunk_sizes;
};

struct WriteOptions {
  // O_DIRECT through staging buffers (falls back to buffered I/O where the
  // filesystem refuses it).
  bool direct_io = true;
};

// Writes `items` to `<dir>/__<rank>_0.distcp` atomically (temp file, fsync,
// rename, fsync of the folder; the folder is created if needed) and returns
// one result per item, in file order. Each tensor is torch.save'd on its own
// (archive name "archive", as torch.save into a BytesIO names it), its bytes
// streamed from tensor memory to the file (device tensors go through host
// memory one item at a time).
absl::StatusOr<std::vector<WriteResult>> WriteRankFile(const std::string& dir, int rank,
                                                       const std::vector<WriteItem>& items,
                                                       const WriteOptions& options = {});

// The global Metadata from every rank's results (results_by_rank[r] from
// rank r), as DCP's global save plan makes it: keys in order of first
// appearance, chunks in rank order with index hints, storage_data,
// planner_data from the items' paths, version "1.0.0". An item saved by more
// than one rank (a replicated tensor, a bytes value) keeps the first rank's
// copy. Errors when ranks disagree on a key's dtype, size or kind, or when a
// tensor's chunks overlap, leave its bounds or do not cover it.
absl::StatusOr<Metadata> BuildMetadata(
    const std::vector<std::vector<WriteResult>>& results_by_rank,
    std::optional<StorageMeta> storage_meta = std::nullopt);

// StorageMeta as FileSystemWriter fills it: checkpoint_id = the folder,
// save_id = a fresh uuid4 string.
StorageMeta NewStorageMeta(const std::string& dir);

// Writes `<dir>/.metadata` (temp file, fsync, rename, fsync of the folder).
absl::Status WriteMetadata(const std::string& dir, const Metadata& metadata);

// Before overwriting a checkpoint folder: creates it if needed and removes
// its `.metadata` (durably), so that a crash mid-save leaves a folder that
// reads as incomplete instead of a mix of old and new shards that looks
// complete. Call once (rank 0) before any rank writes.
absl::Status PrepareCheckpointDir(const std::string& dir);

// Removes `__<r>_<n>.distcp` files with r >= world_size (left by an earlier
// save with more ranks) and stray `.<name>.tmp.*` temp files of shard files.
// Call it once every rank's WriteRankFile has returned (it would remove a
// temp file still being written).
absl::Status RemoveStaleRankFiles(const std::string& dir, int world_size);

// A byte form of WriteResults for sending them between ranks.
absl::StatusOr<std::string> EncodeWriteResults(const std::vector<WriteResult>& results);
absl::StatusOr<std::vector<WriteResult>> DecodeWriteResults(std::string_view bytes);

}  // namespace fabric::dcp

#endif  // FABRIC_CHECKPOINT_DCP_WRITER_H_
