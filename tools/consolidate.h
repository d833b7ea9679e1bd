// `fabric consolidate`: a sharded (DCP) checkpoint folder -> one torch.save
// file, streaming.
//
// The output is what Lightning's consolidate_checkpoint writes for the same
// folder: the DCP keys nested back by `.metadata`'s planner_data (model
// weights keyed by parameter name, optimizer state keyed by parameter name
// with its param_groups), then every entry of Lightning's `meta.pt`, if the
// folder has one, merged in at the top level (dict.update). Unlike Python,
// nothing is held in memory whole: the object tree is written first, with
// tensors as references, then each tensor is reassembled from its chunks and
// streamed to the file in slabs of at most `slab_bytes` (rows of dim 0), so
// peak memory is bounded by the slab size (plus one row of the widest tensor),
// whatever the checkpoint's size.
#ifndef FABRIC_TOOLS_CONSOLIDATE_H_
#define FABRIC_TOOLS_CONSOLIDATE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "checkpoint/value.h"

namespace fabric::tools {

struct ConsolidateOptions {
  // Empty: DefaultOutputFile(folder).
  std::string output_file;
  // Replace an existing output file (atomically, only once the new one is
  // complete). Without it an existing output is an AlreadyExists error.
  bool force = false;
  // Staging memory for one read of a tensor (the reader may stage as much
  // again for chunks it cannot read in place).
  uint64_t slab_bytes = uint64_t{64} << 20;
  // O_DIRECT writes (no page cache pollution); falls back where unsupported.
  bool direct_io = true;
  // Check every byte read (CRC-32s of records and items; see LoadOptions).
  bool verify_checksums = true;
  // Called as tensor bytes are written: bytes done, bytes in total.
  std::function<void(uint64_t done, uint64_t total)> progress;
  // When set and it becomes true (a signal handler), the consolidation stops
  // with a Cancelled error and leaves no output file.
  const std::atomic<bool>* cancel = nullptr;
};

struct ConsolidateStats {
  std::string output_file;
  int64_t keys = 0;            // keys in `.metadata`
  int64_t storages = 0;        // tensor storages written
  uint64_t tensor_bytes = 0;   // their bytes
  bool merged_meta = false;    // whether a meta.pt was merged in
};

// `<folder>.consolidated`, next to the folder (trailing slashes ignored).
std::string DefaultOutputFile(const std::string& folder);

// Writes the consolidated checkpoint of `folder` atomically (a temp file next
// to the output, renamed at the end: an error or interruption leaves nothing
// under the output name). Errors: AlreadyExists when the output exists and
// !force; NotFound / InvalidArgument when `folder` is not a sharded
// checkpoint; DataLoss and others, naming the file and key, for a damaged
// one; Cancelled when `cancel` was raised.
absl::StatusOr<ConsolidateStats> Consolidate(const std::string& folder,
                                             const ConsolidateOptions& options = {});

// The same checkpoint loaded whole into memory through the library
// (CheckpointReader::ReadStateDict, then meta.pt merged in): the reference
// the streaming output must equal.
absl::StatusOr<Value> LoadShardedCheckpoint(const std::string& folder);

}  // namespace fabric::tools

#endif  // FABRIC_TOOLS_CONSOLIDATE_H_
