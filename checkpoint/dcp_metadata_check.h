// Cross-checks of a DCP folder's .metadata against itself and its shard files.
// .metadata is a pickle without a checksum; every load (CheckpointReader::Open)
// and `fabric verify` run these checks, so that a damaged or inconsistent
// metadata file is refused before any byte is read into a tensor.
#ifndef FABRIC_CHECKPOINT_DCP_METADATA_CHECK_H_
#define FABRIC_CHECKPOINT_DCP_METADATA_CHECK_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/dcp_metadata.h"

namespace fabric::dcp {

// One storage entry and the key (and chunk) it holds.
struct MetadataItem {
  std::string fqn;
  const StorageInfo* info = nullptr;
  const TensorStorageMetadata* tensor = nullptr;  // null: a bytes key
  const ChunkStorageMetadata* chunk = nullptr;    // tensors only
};

// A tensor key's chunks lie inside its size, do not overlap and cover it
// exactly. `where` names the metadata file in messages.
absl::Status CheckChunks(const std::string& fqn, const TensorStorageMetadata& t,
                         const std::string& where);

// Every key's chunks (CheckChunks); every chunk and bytes key has exactly one
// storage entry and every storage entry belongs to one; offsets and lengths
// are not negative. Returns the items, in the order of the metadata.
absl::StatusOr<std::vector<MetadataItem>> CheckMetadata(const Metadata& md,
                                                        const std::string& where);

// The items' byte ranges lie inside their files (`file_sizes`: relative path
// -> size; items of files not in it are skipped: a missing shard file is the
// caller's error, when the file is needed) and no two items of one file
// overlap. `dir` names the folder in messages.
absl::Status CheckItemRanges(const std::vector<MetadataItem>& items,
                             const std::map<std::string, uint64_t>& file_sizes,
                             const std::string& dir);

}  // namespace fabric::dcp

#endif  // FABRIC_CHECKPOINT_DCP_METADATA_CHECK_H_
