// Reading one .safetensors file (format: safetensors_header.h).
//
// Open() reads and validates the header only. Tensor bytes are read on
// demand, each read checked against the header's bounds: straight into an
// existing tensor's memory with pread (a parameter of the file's dtype and
// shape costs no extra copy and no allocation), by rows of dim 0 (what an
// FSDP rank owns), or as a new tensor mapped copy-on-write from the file
// (zero-copy until written).
#ifndef FABRIC_CHECKPOINT_SAFETENSORS_READER_H_
#define FABRIC_CHECKPOINT_SAFETENSORS_READER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/file_reader.h"
#include "checkpoint/safetensors_header.h"

namespace fabric {

class SafetensorsFile {
 public:
  // Errors (DataLoss, naming the file and, where one is at fault, the
  // tensor): a file shorter than 8 bytes, a header length over the limit or
  // beyond the file, and everything ParseSafetensorsHeader refuses.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return header_.tensors; }
  // File offset of the data section (8 + header length).
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return file_->size(); }
  const std::shared_ptr<FileReader>& file() const { return file_; }

  // nullptr when the file has no tensor `name`.
  const SafetensorsTensorInfo* Find(std::string_view name) const;

  // Reads rows [row_begin, row_begin + rows) of dim 0 (a 0-dim tensor has one
  // row) as raw bytes into `dst`, which holds exactly that many bytes.
  absl::Status ReadRowBytes(const SafetensorsTensorInfo& t, int64_t row_begin, int64_t rows,
                            void* dst, uint64_t n) const;
  // Rows into `dst` (any device, dtype, layout) shaped like those rows: the
  // bytes go straight into dst when it is a contiguous CPU tensor of the
  // file's dtype, else through a temporary and copy_ (cast, device).
  absl::Status ReadRowsInto(const SafetensorsTensorInfo& t, int64_t row_begin, int64_t rows,
                            at::Tensor& dst) const;
  // The whole tensor into `dst` of its shape (as ReadRowsInto).
  absl::Status ReadInto(const SafetensorsTensorInfo& t, at::Tensor& dst) const;
  // A new CPU tensor mapped from the file (MAP_PRIVATE: writes stay in this
  // process), or read when mapping is not possible.
  absl::StatusOr<at::Tensor> MapTensor(const SafetensorsTensorInfo& t) const;

 private:
  SafetensorsFile() = default;

  std::shared_ptr<FileReader> file_;
  SafetensorsHeader header_;
  uint64_t data_offset_ = 0;
  std::unordered_map<std::string_view, size_t> index_;
};

// The contiguous strides of `shape`.
std::vector<int64_t> ContiguousStridesOf(const std::vector<int64_t>& shape);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_SAFETENSORS_READER_H_
