#include "checkpoint/safetensors_writer.h"

#include <algorithm>
#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace fabric {

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<SafetensorsTensorInfo> tensors,
    std::optional<std::map<std::string, std::string>> metadata,
    const SafetensorsWriteOptions& options) {
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  w->header_.tensors = std::move(tensors);
  w->header_.metadata = std::move(metadata);
  absl::StatusOr<std::string> prefix = LayOutSafetensors(w->header_);
  if (!prefix.ok()) {
    return absl::Status(prefix.status().code(),
                        absl::StrCat("writing '", path, "': ", prefix.status().message()));
  }
  AtomicFileWriter::Options file_options;
  file_options.direct_io = options.direct_io;
  file_options.buffers = 4;
  file_options.buffer_bytes = std::max<size_t>(options.staging_bytes / 4, 4096);
  FABRIC_ASSIGN_OR_RETURN(w->file_, AtomicFileWriter::Create(path, file_options));
  FABRIC_RETURN_IF_ERROR(w->file_->Write(prefix->data(), prefix->size()));
  w->total_ = w->header_.data_bytes();
  w->progress_ = options.progress;
  return w;
}

absl::Status SafetensorsWriter::BeginTensor(const std::string& name) {
  if (open_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "'", file_->path(), "': tensor '", header_.tensors[next_].name, "' is still open"));
  }
  if (next_ >= header_.tensors.size() || header_.tensors[next_].name != name) {
    return absl::FailedPreconditionError(absl::StrCat(
        "'", file_->path(), "': tensor '", name, "' written out of order; expected ",
        next_ < header_.tensors.size() ? absl::StrCat("'", header_.tensors[next_].name, "'")
                                       : std::string("no more tensors")));
  }
  open_ = true;
  written_ = 0;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AppendTensor(const void* data, uint64_t n) {
  if (!open_) return absl::FailedPreconditionError("AppendTensor outside Begin/EndTensor");
  const SafetensorsTensorInfo& t = header_.tensors[next_];
  if (written_ + n > t.nbytes()) {
    return absl::InvalidArgumentError(absl::StrCat("'", file_->path(), "': tensor '", t.name,
                                                   "' gets more than its ", t.nbytes(),
                                                   " bytes"));
  }
  if (n > 0) FABRIC_RETURN_IF_ERROR(file_->Write(data, n));
  written_ += n;
  done_ += n;
  if (progress_) progress_(done_, total_);
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::EndTensor() {
  if (!open_) return absl::FailedPreconditionError("EndTensor without BeginTensor");
  const SafetensorsTensorInfo& t = header_.tensors[next_];
  if (written_ != t.nbytes()) {
    return absl::InvalidArgumentError(absl::StrCat("'", file_->path(), "': tensor '", t.name,
                                                   "' got ", written_, " of its ", t.nbytes(),
                                                   " bytes"));
  }
  open_ = false;
  ++next_;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::WriteTensor(const std::string& name, const void* data,
                                            uint64_t n) {
  FABRIC_RETURN_IF_ERROR(BeginTensor(name));
  FABRIC_RETURN_IF_ERROR(AppendTensor(data, n));
  return EndTensor();
}

absl::Status SafetensorsWriter::Commit() {
  if (open_ || next_ != header_.tensors.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "'", file_->path(), "': ", header_.tensors.size() - next_,
        " tensor(s) not written; nothing was published"));
  }
  return file_->Commit();
}

absl::Status SaveSafetensors(const std::string& path,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             std::optional<std::map<std::string, std::string>> metadata,
                             const SafetensorsWriteOptions& options) {
  std::vector<SafetensorsTensorInfo> infos;
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is undefined"));
    }
    SafetensorsTensorInfo info;
    info.name = name;
    info.dtype = t.scalar_type();
    info.shape = t.sizes().vec();
    infos.push_back(std::move(info));
    by_name[name] = &t;
  }
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> w,
                          SafetensorsWriter::Create(path, std::move(infos), std::move(metadata),
                                                    options));
  for (const SafetensorsTensorInfo& info : w->layout()) {
    const at::Tensor t = by_name.at(info.name)->detach().cpu().contiguous();
    FABRIC_RETURN_IF_ERROR(w->WriteTensor(info.name, t.data_ptr(), info.nbytes()));
  }
  return w->Commit();
}

}  // namespace fabric
