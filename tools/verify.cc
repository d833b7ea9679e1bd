#include "tools/verify.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/crc32.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_metadata_check.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/file_io.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "checkpoint/zip_reader.h"
#include "checkpoint/checkpoint_kind.h"
#include "checkpoint/safetensors_index.h"
#include "tools/verify_safetensors.h"

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;

constexpr int kMaxDepth = 1000;
constexpr size_t kCrcBuffer = size_t{16} << 20;

std::string Box(const std::vector<int64_t>& v) { return absl::StrCat("[", absl::StrJoin(v, ", "), "]"); }

absl::Status Bad(const std::string& msg) { return absl::DataLossError(msg); }

class Verifier {
 public:
  explicit Verifier(const VerifyOptions& options) : options_(options) {}

  VerifyReport& report() { return report_; }
  void set_total(uint64_t total) { total_ = total; }
  void Progress() {
    if (options_.progress) options_.progress(std::min(done_, total_), total_);
  }

  // The storage records every tensor of the archive references exist and
  // are large enough; `what` names the archive (file, key) in messages.
  absl::Status CheckRefs(const TorchFile& f, const Value& v, const std::string& what,
                         int depth = 0) {
    if (depth > kMaxDepth) return Bad(absl::StrCat(what, ": object nesting too deep"));
    switch (v.kind()) {
      case Value::Kind::kTensorRef:
        return CheckRef(f, v.as_tensor_ref(), what);
      case Value::Kind::kList:
      case Value::Kind::kTuple:
        for (const Value& item : v.items()) {
          FABRIC_RETURN_IF_ERROR(CheckRefs(f, item, what, depth + 1));
        }
        return absl::OkStatus();
      case Value::Kind::kDict:
        for (const auto& [k, item] : v.as_dict()) {
          FABRIC_RETURN_IF_ERROR(CheckRefs(f, item, what, depth + 1));
        }
        return absl::OkStatus();
      case Value::Kind::kObject: {
        const Object& o = v.as_object();
        for (const Value& item : *o.args) {
          FABRIC_RETURN_IF_ERROR(CheckRefs(f, item, what, depth + 1));
        }
        if (o.state) {
          FABRIC_RETURN_IF_ERROR(CheckRefs(f, *o.state, what, depth + 1));
        }
        if (o.list_items) {
          for (const Value& item : *o.list_items) {
            FABRIC_RETURN_IF_ERROR(CheckRefs(f, item, what, depth + 1));
          }
        }
        if (o.dict_items) {
          for (const auto& [k, item] : *o.dict_items) {
            FABRIC_RETURN_IF_ERROR(CheckRefs(f, item, what, depth + 1));
          }
        }
        return absl::OkStatus();
      }
      default:
        return absl::OkStatus();
    }
  }

  absl::Status CheckRef(const TorchFile& f, const TensorRef& r, const std::string& what) {
    const std::string record = "data/" + r.storage_key;
    const ZipReader::Entry* e = f.zip().Find(record);
    if (e == nullptr) {
      return Bad(absl::StrCat(what, ": storage record '", record, "' is missing"));
    }
    if (r.sizes.size() != r.strides.size()) {
      return Bad(absl::StrCat(what, ": tensor of storage '", r.storage_key, "' has ",
                              r.sizes.size(), " sizes but ", r.strides.size(), " strides"));
    }
    const int64_t item = static_cast<int64_t>(c10::elementSize(r.dtype));
    int64_t needed = 0;  // elements of the storage the view reaches
    if (r.numel() > 0) {
      int64_t last = r.storage_offset;
      for (size_t i = 0; i < r.sizes.size(); ++i) last += (r.sizes[i] - 1) * r.strides[i];
      needed = last + 1;
    }
    if (r.storage_offset < 0 || r.storage_numel < needed) {
      return Bad(absl::StrCat(what, ": tensor view of storage '", r.storage_key,
                              "' reaches element ", needed, " of a ", r.storage_numel,
                              "-element storage"));
    }
    if (e->size < static_cast<uint64_t>(r.storage_numel * item)) {
      return Bad(absl::StrCat(what, ": storage record '", record, "' holds ", e->size,
                              " bytes, its ", r.storage_numel, "-element storage needs ",
                              r.storage_numel * item));
    }
    return absl::OkStatus();
  }

  // CRC-32 of every record of the archive.
  absl::Status CheckCrcs(const TorchFile& f, const std::string& what) {
    ++report_.archives;
    for (const ZipReader::Entry& e : f.zip().entries()) {
      if (e.compression != 0) {
        return Bad(absl::StrCat(what, ": record '", e.name,
                                "' is compressed (torch.save stores records uncompressed)"));
      }
      uint32_t crc = 0;
      for (uint64_t pos = 0; pos < e.size;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(kCrcBuffer, e.size - pos));
        if (buffer_.size() < n) buffer_.resize(n);
        if (absl::Status s = f.zip().file()->ReadAt(e.data_offset + pos, buffer_.data(), n);
            !s.ok()) {
          return absl::Status(s.code(), absl::StrCat(what, ": record '", e.name, "': ",
                                                     s.message()));
        }
        crc = Crc32(crc, buffer_.data(), n);
        pos += n;
        done_ += n;
        Progress();
      }
      if (crc != e.crc32) {
        return Bad(absl::StrCat(what, ": CRC-32 mismatch in record '", e.name, "' (stored ",
                                absl::Hex(e.crc32), ", data has ", absl::Hex(crc), ")"));
      }
      ++report_.records;
      report_.bytes += e.size;
    }
    return absl::OkStatus();
  }

  absl::Status SingleFile(const std::string& path) {
    FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> f, TorchFile::Open(path));
    const std::string what = absl::StrCat("'", path, "'");
    if (report_.format == "single-file" && f->root().is_dict()) {
      report_.keys = static_cast<int64_t>(f->root().as_dict().size());
    }
    FABRIC_RETURN_IF_ERROR(CheckRefs(*f, f->root(), what));
    return CheckCrcs(*f, what);
  }

  absl::Status Sharded(const std::string& dir);

  absl::Status CheckItemCrc(const FileReader& file, const dcp::StorageInfo& info,
                            const std::string& what) {
    uint32_t crc = 0;
    for (uint64_t pos = 0; pos < static_cast<uint64_t>(info.length);) {
      const size_t n = static_cast<size_t>(
          std::min<uint64_t>(kCrcBuffer, static_cast<uint64_t>(info.length) - pos));
      if (buffer_.size() < n) buffer_.resize(n);
      FABRIC_RETURN_IF_ERROR_PREFIX(file.ReadAt(info.offset + pos, buffer_.data(), n), what,
                                    ": ");
      crc = Crc32(crc, buffer_.data(), n);
      pos += n;
    }
    if (crc != *info.item_crc32) {
      return Bad(absl::StrCat(what, ": CRC-32 of the item's bytes [", info.offset, ", ",
                              info.offset + info.length, ") is ", absl::Hex(crc),
                              ", the metadata says ", absl::Hex(*info.item_crc32),
                              " (damaged, or a file of another checkpoint)"));
    }
    return absl::OkStatus();
  }

 private:
  const VerifyOptions& options_;
  VerifyReport report_;
  uint64_t done_ = 0, total_ = 0;
  std::string buffer_;
};

absl::Status Verifier::Sharded(const std::string& dir) {
  report_.format = "sharded";
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<dcp::CheckpointReader> reader,
                          dcp::CheckpointReader::Open(dir));
  const dcp::Metadata& md = reader->metadata();
  const std::string where = absl::StrCat(dir, "/.metadata");

  // The metadata's own consistency (shared with every load).
  FABRIC_ASSIGN_OR_RETURN(const std::vector<dcp::MetadataItem> items,
                          dcp::CheckMetadata(md, where));
  report_.keys = static_cast<int64_t>(md.state_dict_metadata.size());

  // Byte ranges: files exist, ranges inside them, no two items overlapping.
  std::map<std::string, std::shared_ptr<FileReader>> files;
  std::map<std::string, uint64_t> sizes;
  std::error_code ec;
  uint64_t total = 0;
  for (const dcp::MetadataItem& item : items) {
    const dcp::StorageInfo& info = *item.info;
    const std::string file = (fs::path(dir) / info.relative_path).string();
    if (info.transform_descriptors && !info.transform_descriptors->empty()) {
      return Bad(absl::StrCat("key '", item.fqn, "' in '", file,
                              "' uses stream transforms, which are not supported"));
    }
    if (!files.count(info.relative_path)) {
      if (!fs::exists(file, ec)) {
        return absl::NotFoundError(
            absl::StrCat("missing shard file ", file, " (holds key '", item.fqn, "')"));
      }
      absl::StatusOr<std::shared_ptr<FileReader>> f = FileReader::Open(file);
      if (!f.ok()) {
        return absl::Status(f.status().code(),
                            absl::StrCat("shard file '", file, "' (needed by key '", item.fqn,
                                         "'): ", f.status().message()));
      }
      files[info.relative_path] = *f;
      sizes[info.relative_path] = (*f)->size();
    }
    total += static_cast<uint64_t>(info.length);
  }
  FABRIC_RETURN_IF_ERROR(dcp::CheckItemRanges(items, sizes, dir));
  const std::string meta_path = (fs::path(dir) / kLightningMetaFile).string();
  const bool has_meta = fs::is_regular_file(meta_path, ec);
  if (has_meta) total += fs::file_size(meta_path, ec);
  set_total(total);
  Progress();

  // Every item: a well-formed archive holding what the metadata says.
  for (const dcp::MetadataItem& item : items) {
    const dcp::StorageInfo& info = *item.info;
    const std::string what =
        absl::StrCat("'", (fs::path(dir) / info.relative_path).string(), "' key '", item.fqn, "'",
                     item.tensor ? " chunk at " + Box(item.chunk->offsets) : "");
    absl::StatusOr<std::unique_ptr<TorchFile>> f =
        TorchFile::Open(files[info.relative_path], info.offset, info.length);
    if (!f.ok()) {
      return absl::Status(f.status().code(), absl::StrCat(what, ": ", f.status().message()));
    }
    const Value& root = (*f)->root();
    if (item.tensor) {
      if (!root.is_tensor_ref()) {
        return Bad(absl::StrCat(what, ": holds a ", root.kind_name(), ", not a tensor"));
      }
      const TensorRef& r = root.as_tensor_ref();
      if (r.dtype != item.tensor->properties.dtype) {
        return Bad(absl::StrCat(what, ": tensor has dtype ", c10::toString(r.dtype),
                                ", the metadata says ",
                                c10::toString(item.tensor->properties.dtype)));
      }
      if (r.sizes != item.chunk->sizes) {
        return Bad(absl::StrCat(what, ": tensor has shape ", Box(r.sizes),
                                ", the metadata's chunk ", Box(item.chunk->sizes)));
      }
    }
    FABRIC_RETURN_IF_ERROR(CheckRefs(**f, root, what));
    FABRIC_RETURN_IF_ERROR(CheckCrcs(**f, what));
    if (info.item_crc32) {  // our writer's checksum of the whole item
      FABRIC_RETURN_IF_ERROR(CheckItemCrc(*files[info.relative_path], info, what));
    }
  }
  if (has_meta) {
    FABRIC_RETURN_IF_ERROR(SingleFile(meta_path));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<VerifyReport> Verify(const std::string& path_arg, const VerifyOptions& options) {
  const std::string path = StripTrailingSlashes(path_arg);
  if (IsSafetensorsPath(path)) {
    VerifyReport report;
    FABRIC_RETURN_IF_ERROR(VerifySafetensors(path, options, report));
    return report;
  }
  FABRIC_ASSIGN_OR_RETURN(const CheckpointKind kind, DetectCheckpointKind(path));
  Verifier v(options);
  if (kind == CheckpointKind::kSharded) {
    FABRIC_RETURN_IF_ERROR(v.Sharded(path));
  } else {
    v.report().format = "single-file";
    std::error_code ec;
    v.set_total(fs::file_size(path, ec));
    FABRIC_RETURN_IF_ERROR(v.SingleFile(path));
  }
  return v.report();
}

}  // namespace fabric::tools
