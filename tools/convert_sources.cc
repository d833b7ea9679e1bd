#include "tools/convert_sources.h"

#include <cstring>
#include <set>
#include <utility>
#include <variant>

#include <ATen/ATen.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/safetensors_index.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "checkpoint/checkpoint_kind.h"

namespace fabric::tools {
namespace {

constexpr int kMaxDepth = 1000;

int64_t RowNumel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

std::string KeyText(const Value& k) {
  if (k.is_string()) return k.as_string();
  if (k.is_int()) return std::to_string(k.as_int());
  return k.DebugString();
}

// -- safetensors -------------------------------------------------------------

class SafetensorsFeed : public TensorFeed {
 public:
  explicit SafetensorsFeed(std::unique_ptr<SafetensorsCheckpoint> c) : c_(std::move(c)) {
    for (const auto& [name, t] : c_->tensors()) {
      tensors_.push_back({name, t.info->dtype, t.info->shape});
      where_.push_back(t);
    }
    metadata_ = c_->metadata();
    // An index's metadata (total_size) describes the folder, not the tensors.
    if (c_->sharded()) metadata_.clear();
  }
  std::string description() const override { return absl::StrCat("'", c_->path(), "'"); }
  absl::Status ReadRows(size_t i, int64_t row_begin, int64_t rows, void* dst) override {
    const SourceTensor& t = tensors_[i];
    return where_[i].file->ReadRowBytes(*where_[i].info, row_begin, rows, dst,
                                        t.row_bytes() * static_cast<uint64_t>(rows));
  }

 private:
  std::unique_ptr<SafetensorsCheckpoint> c_;
  std::vector<SafetensorsCheckpoint::Tensor> where_;
};

// -- torch.save file ---------------------------------------------------------

class TorchFeed : public TensorFeed {
 public:
  static absl::StatusOr<std::unique_ptr<TensorFeed>> Open(const std::string& path,
                                                          const std::string& entry,
                                                          bool entry_given) {
    std::unique_ptr<TorchFeed> f(new TorchFeed());
    FABRIC_ASSIGN_OR_RETURN(f->file_, TorchFile::Open(path));
    const Value& root = f->file_->root();
    const Value* start = &root;
    f->description_ = absl::StrCat("'", path, "'");
    if (!entry.empty()) {
      const Value* e = root.is_dict() ? root.as_dict().Find(entry) : nullptr;
      if (e != nullptr) {
        start = e;
        absl::StrAppend(&f->description_, " entry '", entry, "'");
      } else if (entry_given || !IsFlatStateDict(root)) {
        std::vector<std::string> have;
        if (root.is_dict()) {
          for (const auto& [k, v] : root.as_dict()) have.push_back(KeyText(k));
        }
        return absl::NotFoundError(absl::StrCat(
            "'", path, "' has no entry '", entry, "' (", root.is_dict() ? "entries: " : "it holds a ",
            root.is_dict() ? absl::StrJoin(have, ", ") : root.kind_name(),
            "); name one with --entry, or --entry= for the whole file"));
      }
    }
    FABRIC_RETURN_IF_ERROR(f->Flatten(*start, "", 0));
    return std::unique_ptr<TensorFeed>(std::move(f));
  }

  std::string description() const override { return description_; }

  absl::Status ReadRows(size_t i, int64_t row_begin, int64_t rows, void* dst) override {
    const SourceTensor& t = tensors_[i];
    const uint64_t n = t.row_bytes() * static_cast<uint64_t>(rows);
    if (n == 0) return absl::OkStatus();
    const uint64_t skip = t.row_bytes() * static_cast<uint64_t>(row_begin);
    if (const at::Tensor* mem = std::get_if<at::Tensor>(&leaves_[i])) {
      std::memcpy(dst, static_cast<const char*>(mem->data_ptr()) + skip, n);
      return absl::OkStatus();
    }
    const TensorRef& ref = std::get<TensorRef>(leaves_[i]);
    if (!ref.is_contiguous()) {
      // A strided view: read its storage once, keep the one tensor.
      if (cached_index_ != i) {
        cached_ = at::Tensor();
        FABRIC_ASSIGN_OR_RETURN(at::Tensor whole, file_->ReadTensor(ref));
        cached_ = whole.contiguous();
        cached_index_ = i;
      }
      std::memcpy(dst, static_cast<const char*>(cached_.data_ptr()) + skip, n);
      return absl::OkStatus();
    }
    const std::string record = "data/" + ref.storage_key;
    const ZipReader::Entry* e = file_->zip().Find(record);
    const uint64_t item = c10::elementSize(ref.dtype);
    const uint64_t need = (static_cast<uint64_t>(ref.storage_offset) +
                           static_cast<uint64_t>(ref.numel())) * item;
    if (e == nullptr || e->size < need || e->compression != 0) {
      return absl::DataLossError(absl::StrCat(
          description_, ": tensor '", t.name, "': storage record '", record, "' is ",
          e == nullptr ? std::string("missing")
                       : e->compression != 0 ? std::string("compressed")
                                             : absl::StrCat(e->size, " bytes, less than the ",
                                                            need, " it needs")));
    }
    return file_->zip().file()->ReadAt(
        e->data_offset + static_cast<uint64_t>(ref.storage_offset) * item + skip, dst, n);
  }

 private:
  TorchFeed() = default;

  static bool IsFlatStateDict(const Value& root) {
    if (!root.is_dict() || root.as_dict().empty()) return false;
    for (const auto& [k, v] : root.as_dict()) {
      if (!v.is_tensor_ref() && !v.is_tensor()) return false;
    }
    return true;
  }

  absl::Status Flatten(const Value& v, const std::string& key, int depth) {
    if (depth > kMaxDepth) {
      return absl::DataLossError(absl::StrCat(description_, ": nesting deeper than ", kMaxDepth));
    }
    auto join = [&](const std::string& part) { return key.empty() ? part : key + "." + part; };
    if (v.is_dict()) {
      for (const auto& [k, item] : v.as_dict()) {
        FABRIC_RETURN_IF_ERROR(Flatten(item, join(KeyText(k)), depth + 1));
      }
      return absl::OkStatus();
    }
    if (v.is_sequence()) {
      for (size_t i = 0; i < v.items().size(); ++i) {
        FABRIC_RETURN_IF_ERROR(Flatten(v.items()[i], join(std::to_string(i)), depth + 1));
      }
      return absl::OkStatus();
    }
    if (v.is_tensor_ref()) {
      const TensorRef& r = v.as_tensor_ref();
      tensors_.push_back({key, r.dtype, r.sizes});
      leaves_.emplace_back(r);
    } else if (v.is_tensor()) {
      at::Tensor t = v.as_tensor().detach().cpu().contiguous();
      tensors_.push_back({key, t.scalar_type(), t.sizes().vec()});
      leaves_.emplace_back(t);
    } else {
      skipped_.push_back(key.empty() ? std::string("(root)") : key);
    }
    return absl::OkStatus();
  }

  std::unique_ptr<TorchFile> file_;
  std::string description_;
  std::vector<std::variant<TensorRef, at::Tensor>> leaves_;
  at::Tensor cached_;
  size_t cached_index_ = static_cast<size_t>(-1);
};

// -- DCP folder --------------------------------------------------------------

class DcpFeed : public TensorFeed {
 public:
  static absl::StatusOr<std::unique_ptr<TensorFeed>> Open(const std::string& path,
                                                          const std::string& entry,
                                                          bool entry_given) {
    std::unique_ptr<DcpFeed> f(new DcpFeed());
    FABRIC_ASSIGN_OR_RETURN(f->reader_, dcp::CheckpointReader::Open(path));
    f->description_ = absl::StrCat("'", path, "'");
    const std::string prefix = entry.empty() ? "" : entry + ".";
    std::set<std::string> entries;
    for (const auto& [fqn, smd] : f->reader_->metadata().state_dict_metadata) {
      entries.insert(fqn.substr(0, fqn.find('.')));
      if (!absl::StartsWith(fqn, prefix)) continue;
      const std::string name = fqn.substr(prefix.size());
      if (const auto* t = std::get_if<dcp::TensorStorageMetadata>(&smd)) {
        f->tensors_.push_back({name, t->properties.dtype, t->size});
        f->fqns_.push_back(fqn);
      } else {
        f->skipped_.push_back(name);
      }
    }
    if (f->tensors_.empty() && f->skipped_.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "'", path, "' has no entry '", entry, "' (entries: ", absl::StrJoin(entries, ", "),
          "); name one with --entry", entry_given ? "" : ", or --entry= for the whole folder"));
    }
    if (!entry.empty()) absl::StrAppend(&f->description_, " entry '", entry, "'");
    return std::unique_ptr<TensorFeed>(std::move(f));
  }

  std::string description() const override { return description_; }

  absl::Status ReadRows(size_t i, int64_t row_begin, int64_t rows, void* dst) override {
    const SourceTensor& t = tensors_[i];
    std::vector<int64_t> offsets(t.shape.size(), 0), box = t.shape;
    if (!t.shape.empty()) {
      offsets[0] = row_begin;
      box[0] = rows;
    }
    if (t.row_bytes() * static_cast<uint64_t>(rows) == 0) return absl::OkStatus();
    at::Tensor out = at::from_blob(dst, box, at::TensorOptions().dtype(t.dtype));
    return reader_->ReadRegion(fqns_[i], offsets, box, out);
  }

 private:
  DcpFeed() = default;
  std::unique_ptr<dcp::CheckpointReader> reader_;
  std::vector<std::string> fqns_;
  std::string description_;
};

}  // namespace

uint64_t SourceTensor::row_bytes() const {
  return static_cast<uint64_t>(RowNumel(shape)) * c10::elementSize(dtype);
}

absl::StatusOr<std::unique_ptr<TensorFeed>> OpenTensorFeed(const std::string& path_arg,
                                                           const std::string& entry,
                                                           bool entry_given) {
  const std::string path = StripTrailingSlashes(path_arg);
  if (IsSafetensorsPath(path)) {
    FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> c,
                            SafetensorsCheckpoint::Open(path));
    return std::unique_ptr<TensorFeed>(new SafetensorsFeed(std::move(c)));
  }
  FABRIC_ASSIGN_OR_RETURN(CheckpointKind kind, DetectCheckpointKind(path));
  if (kind == CheckpointKind::kSharded) return DcpFeed::Open(path, entry, entry_given);
  return TorchFeed::Open(path, entry, entry_given);
}

}  // namespace fabric::tools
