// The tensors of one entry of any checkpoint we read, as a flat list of named
// tensors whose bytes are read by rows of dim 0, so that a converter streams
// them with a slab in memory: a torch.save file (ours, Python's, Lightning's),
// a sharded DCP folder, or safetensors (a file or a Hugging Face folder).
#ifndef FABRIC_TOOLS_CONVERT_SOURCES_H_
#define FABRIC_TOOLS_CONVERT_SOURCES_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fabric::tools {

struct SourceTensor {
  std::string name;  // flattened with '.' below the entry
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;

  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
  uint64_t row_bytes() const;
  uint64_t nbytes() const { return row_bytes() * static_cast<uint64_t>(rows()); }
};

class TensorFeed {
 public:
  virtual ~TensorFeed() = default;
  // What was opened, for messages ("file.pt entry 'model'").
  virtual std::string description() const = 0;
  const std::vector<SourceTensor>& tensors() const { return tensors_; }
  // Keys of the entry that are not tensors (a safetensors file holds only
  // tensors, so a converter leaves these out and says so).
  const std::vector<std::string>& skipped() const { return skipped_; }
  // The source's own safetensors __metadata__ (safetensors sources only).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Rows [row_begin, row_begin + rows) of tensors()[index], raw C-order
  // bytes in its dtype, into `dst` of exactly that many bytes.
  virtual absl::Status ReadRows(size_t index, int64_t row_begin, int64_t rows, void* dst) = 0;

 protected:
  std::vector<SourceTensor> tensors_;
  std::vector<std::string> skipped_;
  std::map<std::string, std::string> metadata_;
};

// Opens `path`: safetensors (file, index or folder), a DCP folder, or a
// torch.save file. `entry` picks the top-level key whose tensors are fed
// (DCP: the keys under "<entry>."); "" feeds the whole checkpoint. When
// `entry_given` is false and the checkpoint has no such entry but is itself
// a flat dict of tensors (torch.save(model.state_dict())), the whole file is
// fed. Safetensors sources ignore `entry`. Errors name the path and, when the
// entry is missing, list the entries there are.
absl::StatusOr<std::unique_ptr<TensorFeed>> OpenTensorFeed(const std::string& path,
                                                           const std::string& entry,
                                                           bool entry_given);

}  // namespace fabric::tools

#endif  // FABRIC_TOOLS_CONVERT_SOURCES_H_
