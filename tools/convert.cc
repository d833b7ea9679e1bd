#include "tools/convert.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <system_error>
#include <unordered_map>
#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/fs_util.h"
#include "checkpoint/safetensors_index.h"
#include "checkpoint/safetensors_writer.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "checkpoint/checkpoint_kind.h"
#include "tools/convert_sources.h"

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;

bool Castable(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Streams tensors of a feed, slab by slab, casting on the way.
class Copier {
 public:
  Copier(TensorFeed& feed, const ConvertOptions& options, uint64_t total)
      : feed_(feed), options_(options), total_(total) {}

  at::ScalarType OutDtype(size_t i) const {
    const at::ScalarType t = feed_.tensors()[i].dtype;
    return options_.dtype && Castable(t) ? *options_.dtype : t;
  }
  uint64_t OutBytes(size_t i) const {
    const SourceTensor& t = feed_.tensors()[i];
    return t.nbytes() / c10::elementSize(t.dtype) * c10::elementSize(OutDtype(i));
  }

  absl::Status Copy(size_t i, const std::function<absl::Status(const void*, uint64_t)>& append) {
    const SourceTensor& t = feed_.tensors()[i];
    const uint64_t row_bytes = t.row_bytes();
    if (row_bytes == 0 || t.rows() == 0) return absl::OkStatus();
    const int64_t per_slab =
        static_cast<int64_t>(std::max<uint64_t>(1, options_.slab_bytes / row_bytes));
    const at::ScalarType out = OutDtype(i);
    for (int64_t r = 0; r < t.rows(); r += per_slab) {
      if (options_.cancel != nullptr && options_.cancel->load()) {
        return absl::CancelledError("interrupted");
      }
      const int64_t n = std::min(per_slab, t.rows() - r);
      const uint64_t bytes = row_bytes * static_cast<uint64_t>(n);
      void* buf = Stage(bytes);
      FABRIC_RETURN_IF_ERROR(feed_.ReadRows(i, r, n, buf));
      if (out == t.dtype) {
        FABRIC_RETURN_IF_ERROR(append(buf, bytes));
        done_ += bytes;
      } else {
        const int64_t numel = static_cast<int64_t>(bytes / c10::elementSize(t.dtype));
        const at::Tensor cast =
            at::from_blob(buf, {numel}, at::TensorOptions().dtype(t.dtype)).to(out);
        FABRIC_RETURN_IF_ERROR(append(cast.data_ptr(), cast.nbytes()));
        done_ += cast.nbytes();
      }
      if (options_.progress) options_.progress(done_, total_);
    }
    return absl::OkStatus();
  }

 private:
  void* Stage(uint64_t n) {
    if (!staging_.defined() || static_cast<uint64_t>(staging_.numel()) < n) {
      staging_ = at::Tensor();  // free first: peak stays one buffer
      staging_ = at::empty({static_cast<int64_t>(n)}, at::kByte);
    }
    return staging_.data_ptr();
  }

  TensorFeed& feed_;
  const ConvertOptions& options_;
  uint64_t total_;
  uint64_t done_ = 0;
  at::Tensor staging_;
};

absl::Status WriteSafetensorsFile(const std::string& path, TensorFeed& feed,
                                  const std::vector<size_t>& indices,
                                  const std::map<std::string, std::string>& metadata,
                                  Copier& copier, const ConvertOptions& options) {
  std::vector<SafetensorsTensorInfo> infos;
  std::unordered_map<std::string, size_t> index_of;
  for (size_t i : indices) {
    const SourceTensor& t = feed.tensors()[i];
    infos.push_back({t.name, copier.OutDtype(i), t.shape});
    index_of[t.name] = i;
  }
  SafetensorsWriteOptions wo;
  wo.direct_io = options.direct_io;
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> w,
                          SafetensorsWriter::Create(path, std::move(infos), metadata, wo));
  for (const SafetensorsTensorInfo& info : w->layout()) {
    FABRIC_RETURN_IF_ERROR(w->BeginTensor(info.name));
    FABRIC_RETURN_IF_ERROR(copier.Copy(index_of.at(info.name), [&](const void* p, uint64_t n) {
      return w->AppendTensor(p, n);
    }));
    FABRIC_RETURN_IF_ERROR(w->EndTensor());
  }
  return w->Commit();
}

absl::Status WriteTorchFile(const std::string& path, TensorFeed& feed, Copier& copier,
                            const ConvertOptions& options) {
  Dict tree;
  for (size_t i = 0; i < feed.tensors().size(); ++i) {
    const SourceTensor& t = feed.tensors()[i];
    TensorRef ref;
    ref.storage_key = std::to_string(i);
    ref.dtype = copier.OutDtype(i);
    ref.sizes = t.shape;
    ref.strides = ContiguousStridesOf(t.shape);
    ref.storage_numel = ref.numel();
    tree.Set(t.name, Value(std::move(ref)));
  }
  Value root(tree);
  if (options.entry_given && !options.entry.empty()) root = Value(Dict{{options.entry, root}});
  TorchSaveOptions so;
  so.direct_io = options.direct_io;
  so.staging_bytes = size_t{32} << 20;
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchStreamWriter> w,
                          TorchStreamWriter::Create(path, root, so));
  for (const auto& [key, n] : w->StorageOrder()) {
    FABRIC_RETURN_IF_ERROR(w->BeginStorage(key, n));
    FABRIC_RETURN_IF_ERROR(copier.Copy(std::stoul(key), [&](const void* p, uint64_t m) {
      return w->AppendStorage(p, m);
    }));
    FABRIC_RETURN_IF_ERROR(w->EndStorage());
  }
  return w->Commit();
}

bool IsShardFileName(const std::string& name) {
  return absl::StartsWith(name, "model-") && absl::EndsWith(name, ".safetensors") &&
         absl::StrContains(name, "-of-");
}

absl::Status CheckOutput(const std::string& out, bool folder, bool force) {
  std::error_code ec;
  const bool exists = fs::exists(fs::symlink_status(out, ec));
  if (!exists) return absl::OkStatus();
  if (!folder) {
    if (fs::is_directory(out, ec)) {
      return absl::AlreadyExistsError(absl::StrCat("output '", out, "' is an existing folder"));
    }
    if (!force) {
      return absl::AlreadyExistsError(
          absl::StrCat("output file '", out, "' already exists (use --force to overwrite it)"));
    }
    return absl::OkStatus();
  }
  if (!fs::is_directory(out, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "output '", out, "' is an existing file; --max_shard_size writes a folder"));
  }
  for (const auto& e : fs::directory_iterator(out, ec)) {
    const std::string name = e.path().filename().string();
    if ((name == kSafetensorsIndexFileName || name == kSafetensorsSingleFileName ||
         IsShardFileName(name)) &&
        !force) {
      return absl::AlreadyExistsError(absl::StrCat("output folder '", out, "' already holds '",
                                                   name, "' (use --force to replace the export)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint64_t> ParseShardSize(const std::string& text) {
  std::string s = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  struct Unit {
    const char* suffix;
    uint64_t factor;
  };
  const Unit units[] = {{"KIB", 1ull << 10}, {"MIB", 1ull << 20}, {"GIB", 1ull << 30},
                        {"TIB", 1ull << 40}, {"KB", 1000ull},     {"MB", 1000'000ull},
                        {"GB", 1000'000'000ull}, {"TB", 1000'000'000'000ull}, {"B", 1}};
  uint64_t factor = 1;
  for (const Unit& u : units) {
    if (absl::EndsWith(s, u.suffix)) {
      s = s.substr(0, s.size() - std::strlen(u.suffix));
      factor = u.factor;
      break;
    }
  }
  double v = 0;
  if (!absl::SimpleAtod(s, &v) || !(v > 0) || v * static_cast<double>(factor) > 1e18) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_shard_size: '", text, "' is not a size such as 5GB, 500MB, 2GiB or 1000000"));
  }
  return static_cast<uint64_t>(v * static_cast<double>(factor));
}

absl::StatusOr<at::ScalarType> ParseCastDtype(const std::string& text) {
  if (text == "bf16" || text == "bfloat16") return at::kBFloat16;
  if (text == "fp16" || text == "float16" || text == "half") return at::kHalf;
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype: '", text, "' is not one of bf16, fp16"));
}

absl::StatusOr<ConvertStats> Convert(const std::string& source, const ConvertOptions& options) {
  if (options.output_file.empty()) {
    return absl::InvalidArgumentError("--output_file is required");
  }
  const std::string out = StripTrailingSlashes(options.output_file);
  const bool folder = options.max_shard_size.has_value();
  const bool safetensors_out = folder || absl::EndsWith(out, ".safetensors");
  FABRIC_RETURN_IF_ERROR(CheckOutput(out, folder, options.force));
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TensorFeed> feed,
                          OpenTensorFeed(source, options.entry, options.entry_given));
  ConvertStats stats;
  stats.output = out;
  stats.skipped = feed->skipped();
  stats.tensors = static_cast<int64_t>(feed->tensors().size());
  std::set<std::string> names;
  for (const SourceTensor& t : feed->tensors()) {
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          feed->description(), ": two tensors flatten to the name '", t.name, "'"));
    }
  }
  if (feed->tensors().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(feed->description(), " holds no tensors to convert"));
  }
  uint64_t total = 0;
  Copier sizing(*feed, options, 0);
  for (size_t i = 0; i < feed->tensors().size(); ++i) total += sizing.OutBytes(i);
  stats.bytes = total;
  Copier copier(*feed, options, total);
  if (options.progress) options.progress(0, total);

  std::map<std::string, std::string> metadata = feed->metadata();
  metadata.emplace("format", "pt");  // transformers refuses a file without it

  if (!safetensors_out) {
    stats.format = "torch.save";
    stats.files = 1;
    FABRIC_RETURN_IF_ERROR(WriteTorchFile(out, *feed, copier, options));
    return stats;
  }
  std::vector<size_t> all(feed->tensors().size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  if (!folder) {
    stats.format = "safetensors";
    stats.files = 1;
    FABRIC_RETURN_IF_ERROR(WriteSafetensorsFile(out, *feed, all, metadata, copier, options));
    return stats;
  }

  // Shards in state-dict order, a new one when the next tensor would not
  // fit (transformers' rule: a tensor bigger than the limit gets its own).
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t i : all) {
    const uint64_t n = copier.OutBytes(i);
    if (!shards.back().empty() && in_shard + n > *options.max_shard_size) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += n;
  }
  FABRIC_RETURN_IF_ERROR(EnsureDirectory(out));
  std::error_code ec;
  // While the shards are replaced the folder has no index: incomplete.
  fs::remove(fs::path(out) / kSafetensorsIndexFileName, ec);
  std::set<std::string> written;
  std::map<std::string, std::string> weight_map;
  const int n = static_cast<int>(shards.size());
  for (int s = 0; s < n; ++s) {
    const std::string name = n == 1 ? kSafetensorsSingleFileName : SafetensorsShardName(s + 1, n);
    FABRIC_RETURN_IF_ERROR(WriteSafetensorsFile((fs::path(out) / name).string(), *feed,
                                                shards[s], metadata, copier, options));
    written.insert(name);
    for (size_t i : shards[s]) weight_map[feed->tensors()[i].name] = name;
  }
  if (n > 1) FABRIC_RETURN_IF_ERROR(WriteSafetensorsIndex(out, total, weight_map));
  // Files of an earlier export that this one did not write.
  for (const auto& e : fs::directory_iterator(out, ec)) {
    const std::string name = e.path().filename().string();
    if ((IsShardFileName(name) || name == kSafetensorsSingleFileName) && !written.count(name)) {
      fs::remove(e.path(), ec);
    }
  }
  FABRIC_RETURN_IF_ERROR(FsyncDirectory(out));
  stats.format = n > 1 ? "safetensors (sharded)" : "safetensors";
  stats.files = n;
  return stats;
}

}  // namespace fabric::tools
