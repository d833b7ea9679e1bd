// Writing .safetensors files (format: safetensors_header.h), atomically and
// streaming: the header is laid out up front from names, dtypes and shapes
// (exactly as the safetensors package lays it out: the same bytes for the
// same tensors and metadata), then each tensor's bytes arrive in order, in one
// piece or in slabs, so a file larger than memory is written with one slab in
// memory. Nothing appears at the path until Commit() (AtomicFileWriter).
#ifndef FABRIC_CHECKPOINT_SAFETENSORS_WRITER_H_
#define FABRIC_CHECKPOINT_SAFETENSORS_WRITER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/safetensors_header.h"

namespace fabric {

struct SafetensorsWriteOptions {
  // O_DIRECT through staging buffers (falls back where unsupported).
  bool direct_io = true;
  // Memory of the staging buffers.
  size_t staging_bytes = size_t{32} << 20;
  // Called as tensor bytes are written: done, total (of this file).
  std::function<void(uint64_t done, uint64_t total)> progress;
};

class SafetensorsWriter {
 public:
  // `tensors`: name, dtype and shape of each (begin/end are assigned).
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<SafetensorsTensorInfo> tensors,
      std::optional<std::map<std::string, std::string>> metadata,
      const SafetensorsWriteOptions& options = {});

  // The tensors in the order their bytes must be written.
  const std::vector<SafetensorsTensorInfo>& layout() const { return header_.tensors; }

  // The next tensor in one piece, or in pieces with Begin/Append/End.
  absl::Status WriteTensor(const std::string& name, const void* data, uint64_t n);
  absl::Status BeginTensor(const std::string& name);
  absl::Status AppendTensor(const void* data, uint64_t n);
  absl::Status EndTensor();

  // Publishes the file once every tensor is complete.
  absl::Status Commit();

 private:
  SafetensorsWriter() = default;

  std::unique_ptr<AtomicFileWriter> file_;
  SafetensorsHeader header_;
  size_t next_ = 0;             // index into layout() of the next tensor
  bool open_ = false;           // inside Begin/End
  uint64_t written_ = 0;        // bytes of the open tensor
  uint64_t done_ = 0, total_ = 0;
  std::function<void(uint64_t, uint64_t)> progress_;
};

// Writes named CPU or device tensors (non-contiguous ones are made
// contiguous one at a time) to `path` in one go.
absl::Status SaveSafetensors(const std::string& path,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             std::optional<std::map<std::string, std::string>> metadata = {},
                             const SafetensorsWriteOptions& options = {});

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_SAFETENSORS_WRITER_H_
