#include "checkpoint/safetensors_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/little_endian.h"

namespace fabric {
namespace {

int64_t RowNumel(const SafetensorsTensorInfo& t) {
  int64_t n = 1;
  for (size_t i = 1; i < t.shape.size(); ++i) n *= t.shape[i];
  return n;
}

int64_t Rows(const SafetensorsTensorInfo& t) { return t.shape.empty() ? 1 : t.shape[0]; }

}  // namespace

std::vector<int64_t> ContiguousStridesOf(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  FABRIC_ASSIGN_OR_RETURN(f->file_, FileReader::Open(path));
  const uint64_t size = f->file_->size();
  if (size < 8) {
    return absl::DataLossError(absl::StrCat("'", path, "': ", size,
                                            " bytes, too short for a safetensors file (the "
                                            "8-byte header length is missing)"));
  }
  char prefix[8];
  FABRIC_RETURN_IF_ERROR(f->file_->ReadAt(0, prefix, 8));
  const uint64_t n = little_endian::Load64(prefix);
  if (n > kSafetensorsMaxHeaderBytes) {
    return absl::DataLossError(absl::StrCat("'", path, "': header length ", n,
                                            " exceeds the format's limit of ",
                                            kSafetensorsMaxHeaderBytes, " bytes"));
  }
  if (n > size - 8) {
    return absl::DataLossError(absl::StrCat("'", path, "': header length ", n,
                                            " is larger than the file (", size, " bytes)"));
  }
  std::string json(n, '\0');
  FABRIC_RETURN_IF_ERROR(f->file_->ReadAt(8, json.data(), n));
  f->data_offset_ = 8 + n;
  FABRIC_ASSIGN_OR_RETURN(f->header_, ParseSafetensorsHeader(json, size - 8 - n, path));
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) {
    f->index_.emplace(f->header_.tensors[i].name, i);
  }
  return f;
}

const SafetensorsTensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

absl::Status SafetensorsFile::ReadRowBytes(const SafetensorsTensorInfo& t, int64_t row_begin,
                                           int64_t rows, void* dst, uint64_t n) const {
  const int64_t total = Rows(t);
  if (row_begin < 0 || rows < 0 || row_begin + rows > total) {
    return absl::OutOfRangeError(absl::StrCat("'", path(), "': tensor '", t.name, "': rows [",
                                              row_begin, ", ", row_begin + rows,
                                              ") outside its ", total, " rows"));
  }
  const uint64_t row_bytes = static_cast<uint64_t>(RowNumel(t)) * c10::elementSize(t.dtype);
  const uint64_t begin = t.begin + static_cast<uint64_t>(row_begin) * row_bytes;
  const uint64_t len = static_cast<uint64_t>(rows) * row_bytes;
  if (len != n || begin + len > t.end) {
    return absl::InvalidArgumentError(absl::StrCat("'", path(), "': tensor '", t.name, "': ",
                                                   n, " destination bytes for a ", len,
                                                   "-byte read"));
  }
  if (len == 0) return absl::OkStatus();
  absl::Status s = file_->ReadAt(data_offset_ + begin, dst, len);
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("tensor '", t.name, "': ", s.message()));
  }
  return absl::OkStatus();
}

absl::Status SafetensorsFile::ReadRowsInto(const SafetensorsTensorInfo& t, int64_t row_begin,
                                           int64_t rows, at::Tensor& dst) const {
  std::vector<int64_t> shape = t.shape;
  if (!shape.empty()) shape[0] = rows;
  if (dst.sizes() != c10::IntArrayRef(shape) &&
      !(t.shape.empty() && dst.numel() == rows)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", path(), "': tensor '", t.name, "': rows of shape [", absl::StrJoin(shape, ","),
        "] do not fit a destination of shape [", absl::StrJoin(dst.sizes(), ","), "]"));
  }
  c10::NoGradGuard no_grad;
  const uint64_t n = static_cast<uint64_t>(dst.numel()) * c10::elementSize(t.dtype);
  if (dst.device().is_cpu() && dst.scalar_type() == t.dtype && dst.is_contiguous()) {
    return ReadRowBytes(t, row_begin, rows, dst.data_ptr(), n);
  }
  at::Tensor tmp = at::empty(dst.sizes(), at::TensorOptions().dtype(t.dtype));
  FABRIC_RETURN_IF_ERROR(ReadRowBytes(t, row_begin, rows, tmp.data_ptr(), n));
  try {
    dst.copy_(tmp);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("'", path(), "': tensor '", t.name,
                                                   "': cannot copy: ",
                                                   e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status SafetensorsFile::ReadInto(const SafetensorsTensorInfo& t, at::Tensor& dst) const {
  return ReadRowsInto(t, 0, Rows(t), dst);
}

absl::StatusOr<at::Tensor> SafetensorsFile::MapTensor(const SafetensorsTensorInfo& t) const {
  const at::TensorOptions options = at::TensorOptions().dtype(t.dtype);
  if (t.nbytes() == 0) return at::empty(t.shape, options);
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t offset = data_offset_ + t.begin;
  const uint64_t start = offset / page * page;
  const size_t length = static_cast<size_t>(offset - start + t.nbytes());
  const int fd = ::open(path().c_str(), O_RDONLY | O_CLOEXEC);
  void* base = fd < 0 ? MAP_FAILED
                      : mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd,
                             static_cast<off_t>(start));
  if (fd >= 0) ::close(fd);  // the mapping keeps the file
  const bool aligned =
      base != MAP_FAILED &&
      (reinterpret_cast<uintptr_t>(base) + (offset - start)) % c10::elementSize(t.dtype) == 0;
  if (!aligned) {
    if (base != MAP_FAILED) munmap(base, length);
    at::Tensor out = at::empty(t.shape, options);
    FABRIC_RETURN_IF_ERROR(ReadInto(t, out));
    return out;
  }
  char* data = static_cast<char*>(base) + (offset - start);
  return at::from_blob(
      data, t.shape, ContiguousStridesOf(t.shape),
      [base, length](void*) { munmap(base, length); }, options);
}

}  // namespace fabric
