// A safetensors checkpoint: one .safetensors file, or a Hugging Face sharded
// folder (what save_pretrained writes past max_shard_size):
//   model.safetensors.index.json   {"metadata": {"total_size": N},
//                                   "weight_map": {"<tensor>": "<shard file>", ...}}
//   model-00001-of-00003.safetensors, ...
// read as one set of named tensors, and the index written for such a folder.
//
// The index is untrusted like the shards: shard names must be plain file
// names in the folder (no '/', no '..'); every shard it names must exist;
// every tensor it maps must be in that shard, and every tensor of a shard in
// the map, once. Errors name the index or shard file and the tensor.
#ifndef FABRIC_CHECKPOINT_SAFETENSORS_INDEX_H_
#define FABRIC_CHECKPOINT_SAFETENSORS_INDEX_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/tensor_source.h"
#include "checkpoint/safetensors_reader.h"
#include "checkpoint/value.h"

namespace fabric {

// The file names of Hugging Face's layout.
inline constexpr char kSafetensorsIndexFileName[] = "model.safetensors.index.json";
inline constexpr char kSafetensorsSingleFileName[] = "model.safetensors";

// Whether `path` names a safetensors checkpoint by its shape on disk: a file
// ending in ".safetensors" or ".safetensors.index.json", or a folder holding
// model.safetensors.index.json or model.safetensors. (Contents are checked by
// SafetensorsCheckpoint::Open.)
bool IsSafetensorsPath(const std::string& path);

// "model-00002-of-00005.safetensors" (1-based `shard`).
std::string SafetensorsShardName(int shard, int shards);

class SafetensorsCheckpoint {
 public:
  struct Tensor {
    const SafetensorsFile* file;
    const SafetensorsTensorInfo* info;
  };

  // `path`: a .safetensors file, an index file, or a folder with either.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& path);

  // The file or index path opened (named in messages).
  const std::string& path() const { return path_; }
  bool sharded() const { return sharded_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // Every tensor, in the index's order (sorted by name) for a folder, in data
  // order for one file.
  const std::vector<std::pair<std::string, Tensor>>& tensors() const { return tensors_; }
  const Tensor* Find(std::string_view name) const;
  // The index's "metadata" object (its values as JSON text), or the file's
  // __metadata__.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t tensor_bytes() const;

  // Name -> TensorRef (storage_key = the name) for LoadModuleState, and the
  // sources that read those refs, checked against the header's bounds.
  Dict StateDict() const;
  TensorSource Source() const;
  // Straight-in reads per file in one FileReader::ReadBatch each.
  TensorBatchSource BatchSource() const;

 private:
  SafetensorsCheckpoint() = default;
  absl::Status OpenIndex(const std::string& index_path);

  std::string path_;
  bool sharded_ = false;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::pair<std::string, Tensor>> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes `folder`/model.safetensors.index.json atomically as transformers
// does (indent 2, sorted keys): metadata.total_size and the weight map.
absl::Status WriteSafetensorsIndex(const std::string& folder, uint64_t total_size,
                                   const std::map<std::string, std::string>& weight_map);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_SAFETENSORS_INDEX_H_
