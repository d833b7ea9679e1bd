#include "tools/consolidate.h"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/file_io.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/zip_reader.h"
#include "checkpoint/checkpoint_kind.h"

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;

// Where the bytes of one output storage come from.
struct Source {
  enum Kind { kDcp, kMeta, kMemory } kind = kDcp;
  std::string fqn;       // kDcp: the checkpoint key
  TensorRef meta_ref;    // kMeta: the tensor in meta.pt (its original storage key)
  at::Tensor tensor;     // kMemory: a tensor inside a bytes item, already read
};

constexpr int kMaxDepth = 1000;

std::vector<int64_t> ContiguousStrides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t s = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(sizes[i], 1);
  }
  return strides;
}

// Builds the output tree and remembers, for every storage key it uses, where
// its bytes are.
class Planner {
 public:
  std::string NewKey(Source source) {
    std::string key = std::to_string(sources_.size());
    sources_.emplace(key, std::move(source));
    return key;
  }

  Value DcpTensor(const std::string& fqn, const dcp::TensorStorageMetadata& md) {
    TensorRef ref;
    ref.dtype = md.properties.dtype;
    ref.sizes = md.size;
    ref.strides = ContiguousStrides(md.size);
    ref.storage_numel = ref.numel();
    Source s;
    s.kind = Source::kDcp;
    s.fqn = fqn;
    ref.storage_key = NewKey(std::move(s));
    return Value(std::move(ref));
  }

  // Replaces tensors (read ones and meta.pt references) in `v` by references
  // to fresh storage keys. Tensors sharing a storage in meta.pt keep sharing.
  absl::Status Adopt(Value& v, const std::string& what, int depth = 0) {
    if (depth > kMaxDepth) {
      return absl::DataLossError(absl::StrCat(what, ": object nesting deeper than ", kMaxDepth));
    }
    switch (v.kind()) {
      case Value::Kind::kTensor: {
        at::Tensor t = v.as_tensor().contiguous().cpu();
        TensorRef ref;
        ref.dtype = t.scalar_type();
        ref.sizes = t.sizes().vec();
        ref.strides = ContiguousStrides(ref.sizes);
        ref.storage_numel = t.numel();
        ref.requires_grad = t.requires_grad();
        Source s;
        s.kind = Source::kMemory;
        s.tensor = t.detach();
        ref.storage_key = NewKey(std::move(s));
        v = Value(std::move(ref));
        return absl::OkStatus();
      }
      case Value::Kind::kTensorRef: {
        TensorRef ref = v.as_tensor_ref();
        auto it = meta_keys_.find(ref.storage_key);
        std::string key;
        if (it != meta_keys_.end()) {
          key = it->second;
        } else {
          Source s;
          s.kind = Source::kMeta;
          s.meta_ref = ref;
          key = NewKey(std::move(s));
          meta_keys_.emplace(ref.storage_key, key);
        }
        ref.storage_key = key;
        v = Value(std::move(ref));
        return absl::OkStatus();
      }
      case Value::Kind::kList:
      case Value::Kind::kTuple:
        for (Value& item : v.items()) {
          FABRIC_RETURN_IF_ERROR(Adopt(item, what, depth + 1));
        }
        return absl::OkStatus();
      case Value::Kind::kDict:
        for (auto& [k, item] : v.as_dict().mutable_items()) {
          FABRIC_RETURN_IF_ERROR(Adopt(item, what, depth + 1));
        }
        return absl::OkStatus();
      case Value::Kind::kObject: {
        Object& o = v.as_object();
        for (Value& item : *o.args) {
          FABRIC_RETURN_IF_ERROR(Adopt(item, what, depth + 1));
        }
        if (o.state) {
          FABRIC_RETURN_IF_ERROR(Adopt(*o.state, what, depth + 1));
        }
        if (o.list_items) {
          for (Value& item : *o.list_items) {
            FABRIC_RETURN_IF_ERROR(Adopt(item, what, depth + 1));
          }
        }
        if (o.dict_items) {
          for (auto& [k, item] : *o.dict_items) {
            FABRIC_RETURN_IF_ERROR(Adopt(item, what, depth + 1));
          }
        }
        return absl::OkStatus();
      }
      default:
        return absl::OkStatus();
    }
  }

  const Source& source(const std::string& key) const { return sources_.at(key); }

 private:
  std::unordered_map<std::string, Source> sources_;
  std::unordered_map<std::string, std::string> meta_keys_;  // meta.pt key -> ours
};

absl::Status Cancelled(const std::atomic<bool>* cancel) {
  if (cancel && cancel->load()) return absl::CancelledError("interrupted");
  return absl::OkStatus();
}

}  // namespace

std::string DefaultOutputFile(const std::string& folder) {
  return StripTrailingSlashes(folder) + ".consolidated";
}

absl::StatusOr<ConsolidateStats> Consolidate(const std::string& folder_arg,
                                             const ConsolidateOptions& options) {
  const std::string folder = StripTrailingSlashes(folder_arg);
  FABRIC_ASSIGN_OR_RETURN(const CheckpointKind kind, DetectCheckpointKind(folder));
  if (kind != CheckpointKind::kSharded) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", folder, "' is a single-file checkpoint already; consolidate takes a sharded folder"));
  }
  ConsolidateStats stats;
  stats.output_file =
      options.output_file.empty() ? DefaultOutputFile(folder) : options.output_file;
  const std::string& out = stats.output_file;
  auto check_output = [&]() -> absl::Status {
    std::error_code ec;
    if (fs::is_directory(out, ec)) {
      return absl::AlreadyExistsError(absl::StrCat("output '", out, "' is an existing folder"));
    }
    if (fs::exists(fs::symlink_status(out, ec)) && !options.force) {
      return absl::AlreadyExistsError(absl::StrCat(
          "output file '", out, "' already exists (use --force to overwrite it)"));
    }
    return absl::OkStatus();
  };
  FABRIC_RETURN_IF_ERROR(check_output());

  dcp::ReaderOptions reader_options;
  reader_options.slab_bytes = options.slab_bytes;
  reader_options.verify_checksums = options.verify_checksums;
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<dcp::CheckpointReader> reader,
                          dcp::CheckpointReader::Open(folder, reader_options));
  const dcp::Metadata& md = reader->metadata();

  // 1. The tree, with references instead of tensors.
  Planner planner;
  std::unordered_map<std::string, const dcp::ObjectPath*> paths;
  if (md.planner_data) {
    for (const auto& [fqn, path] : *md.planner_data) paths.emplace(fqn, &path);
  }
  std::vector<dcp::FlatEntry> entries;
  entries.reserve(md.state_dict_metadata.size());
  for (const auto& [fqn, smd] : md.state_dict_metadata) {
    dcp::FlatEntry e;
    e.key = fqn;
    auto it = paths.find(fqn);
    e.path = it != paths.end() && !it->second->empty() ? *it->second : dcp::ObjectPath{fqn};
    if (const auto* t = std::get_if<dcp::TensorStorageMetadata>(&smd)) {
      e.value = planner.DcpTensor(fqn, *t);
    } else {
      FABRIC_ASSIGN_OR_RETURN(e.value, reader->ReadObject(fqn));
      FABRIC_RETURN_IF_ERROR(planner.Adopt(e.value, absl::StrCat(folder, " key '", fqn, "'")));
    }
    entries.push_back(std::move(e));
  }
  stats.keys = static_cast<int64_t>(entries.size());
  absl::StatusOr<Value> tree = dcp::UnflattenStateDict(entries);
  if (!tree.ok()) {
    return absl::DataLossError(
        absl::StrCat(folder, "/.metadata: ", tree.status().message()));
  }
  entries.clear();

  std::unique_ptr<TorchFile> meta;
  const std::string meta_path = LightningMetaPath(folder);
  std::error_code ec;
  if (fs::is_regular_file(meta_path, ec)) {
    LoadOptions load;
    load.verify_checksums = options.verify_checksums;
    FABRIC_ASSIGN_OR_RETURN(meta, TorchFile::Open(meta_path, load));
    if (!meta->root().is_dict()) {
      return absl::DataLossError(absl::StrCat("'", meta_path, "' holds a ",
                                              meta->root().kind_name(), ", not a dict"));
    }
    Value extra = meta->root().Clone();
    FABRIC_RETURN_IF_ERROR(planner.Adopt(extra, meta_path));
    for (const auto& [k, v] : extra.as_dict()) tree->as_dict().Set(k, v);
    stats.merged_meta = true;
  }

  // 2. The archive: pickle first, then each storage streamed.
  TorchSaveOptions save_options;
  save_options.direct_io = options.direct_io;
  save_options.staging_bytes = size_t{32} << 20;  // memory stays flat
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchStreamWriter> writer,
                          TorchStreamWriter::Create(out, *tree, save_options));
  uint64_t total = 0;
  for (const auto& [key, n] : writer->StorageOrder()) total += n;
  uint64_t done = 0;
  auto report = [&]() {
    if (options.progress) options.progress(done, total);
  };
  report();

  // One staging buffer, reused (grown only for a row wider than a slab).
  at::Tensor staging;
  auto stage = [&](uint64_t nbytes) -> void* {
    if (!staging.defined() || static_cast<uint64_t>(staging.numel()) < nbytes) {
      staging = at::Tensor();  // free first: peak stays one buffer
      staging = at::empty({static_cast<int64_t>(std::max<uint64_t>(nbytes, 1))}, at::kByte);
    }
    return staging.data_ptr();
  };

  for (const auto& [key, nbytes] : writer->StorageOrder()) {
    FABRIC_RETURN_IF_ERROR(Cancelled(options.cancel));
    const Source& src = planner.source(key);
    FABRIC_RETURN_IF_ERROR(writer->BeginStorage(key, nbytes));
    switch (src.kind) {
      case Source::kDcp: {
        const dcp::TensorStorageMetadata* t = reader->FindTensor(src.fqn);
        if (t == nullptr) {
          return absl::InternalError(absl::StrCat("key '", src.fqn, "' is not a tensor key"));
        }
        if (nbytes == 0) break;
        const std::vector<int64_t>& size = t->size;
        const at::ScalarType dtype = t->properties.dtype;
        // Slabs of whole rows of dim 0 (a 0-dim tensor is one slab).
        const int64_t rows = size.empty() ? 1 : size[0];
        const uint64_t row_bytes = nbytes / static_cast<uint64_t>(rows);
        const int64_t rows_per_slab = static_cast<int64_t>(
            std::max<uint64_t>(1, options.slab_bytes / std::max<uint64_t>(row_bytes, 1)));
        std::vector<int64_t> offsets(size.size(), 0), box = size;
        for (int64_t r = 0; r < rows; r += rows_per_slab) {
          FABRIC_RETURN_IF_ERROR(Cancelled(options.cancel));
          const int64_t n = std::min(rows_per_slab, rows - r);
          const uint64_t bytes = static_cast<uint64_t>(n) * row_bytes;
          if (!size.empty()) {
            offsets[0] = r;
            box[0] = n;
          }
          at::Tensor dst = at::from_blob(stage(bytes), box, at::TensorOptions().dtype(dtype));
          FABRIC_RETURN_IF_ERROR(reader->ReadRegion(src.fqn, offsets, box, dst));
          FABRIC_RETURN_IF_ERROR(writer->AppendStorage(dst.data_ptr(), bytes));
          done += bytes;
          report();
        }
        break;
      }
      case Source::kMeta: {
        const std::string record = "data/" + src.meta_ref.storage_key;
        const ZipReader::Entry* e = meta->zip().Find(record);
        if (e == nullptr || e->size < nbytes) {
          return absl::DataLossError(absl::StrCat(
              "'", meta_path, "': storage record '", record, "' is ",
              e ? absl::StrCat(e->size, " bytes, less than the ", nbytes, " its tensor needs")
                : std::string("missing")));
        }
        if (e->compression != 0) {
          return absl::DataLossError(absl::StrCat("'", meta_path, "': storage record '", record,
                                                  "' is compressed"));
        }
        for (uint64_t pos = 0; pos < nbytes;) {
          FABRIC_RETURN_IF_ERROR(Cancelled(options.cancel));
          const uint64_t n = std::min<uint64_t>(options.slab_bytes, nbytes - pos);
          void* buf = stage(n);
          FABRIC_RETURN_IF_ERROR(meta->zip().file()->ReadAt(e->data_offset + pos, buf, n));
          FABRIC_RETURN_IF_ERROR(writer->AppendStorage(buf, n));
          pos += n;
          done += n;
          report();
        }
        break;
      }
      case Source::kMemory: {
        FABRIC_RETURN_IF_ERROR(writer->AppendStorage(src.tensor.data_ptr(), nbytes));
        done += nbytes;
        report();
        break;
      }
    }
    FABRIC_RETURN_IF_ERROR(writer->EndStorage());
    ++stats.storages;
  }
  staging = at::Tensor();
  stats.tensor_bytes = total;
  FABRIC_RETURN_IF_ERROR(Cancelled(options.cancel));
  // Someone may have created the output meanwhile: still never overwrite it.
  FABRIC_RETURN_IF_ERROR(check_output());
  FABRIC_RETURN_IF_ERROR(writer->Commit());
  return stats;
}

absl::StatusOr<Value> LoadShardedCheckpoint(const std::string& folder_arg) {
  const std::string folder = StripTrailingSlashes(folder_arg);
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<dcp::CheckpointReader> reader,
                          dcp::CheckpointReader::Open(folder));
  FABRIC_ASSIGN_OR_RETURN(Value tree, reader->ReadStateDict());
  const std::string meta_path = LightningMetaPath(folder);
  std::error_code ec;
  if (fs::is_regular_file(meta_path, ec)) {
    FABRIC_ASSIGN_OR_RETURN(const Value extra, TorchLoad(meta_path));
    if (!extra.is_dict()) {
      return absl::DataLossError(absl::StrCat("'", meta_path, "' does not hold a dict"));
    }
    for (const auto& [k, v] : extra.as_dict()) tree.as_dict().Set(k, v);
  }
  return tree;
}

}  // namespace fabric::tools
