#include "checkpoint/safetensors_index.h"

#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/tensor_value.h"

namespace fabric {
namespace {

namespace fs = std::filesystem;

// An index is small; anything this big is not one.
constexpr uint64_t kMaxIndexBytes = uint64_t{256} << 20;

absl::Status Bad(const std::string& file, const std::string& what) {
  return absl::DataLossError(absl::StrCat("'", file, "': ", what));
}

bool PlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

}  // namespace

bool IsSafetensorsPath(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    return fs::exists(fs::path(path) / kSafetensorsIndexFileName, ec) ||
           fs::exists(fs::path(path) / kSafetensorsSingleFileName, ec);
  }
  return absl::EndsWith(path, ".safetensors") || absl::EndsWith(path, ".safetensors.index.json");
}

std::string SafetensorsShardName(int shard, int shards) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", shard, shards);
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(
    const std::string& path_arg) {
  std::string path = path_arg;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  std::unique_ptr<SafetensorsCheckpoint> c(new SafetensorsCheckpoint());
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("no such file or folder: '", path, "'"));
  }
  if (fs::is_directory(path, ec)) {
    const fs::path index = fs::path(path) / kSafetensorsIndexFileName;
    const fs::path single = fs::path(path) / kSafetensorsSingleFileName;
    if (fs::exists(index, ec)) {
      FABRIC_RETURN_IF_ERROR(c->OpenIndex(index.string()));
      return c;
    }
    if (!fs::exists(single, ec)) {
      return absl::NotFoundError(absl::StrCat("'", path, "' holds neither ",
                                              kSafetensorsIndexFileName, " nor ",
                                              kSafetensorsSingleFileName));
    }
    path = single.string();
  } else if (absl::EndsWith(path, ".index.json")) {
    FABRIC_RETURN_IF_ERROR(c->OpenIndex(path));
    return c;
  }
  c->path_ = path;
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(path));
  for (const SafetensorsTensorInfo& t : f->tensors()) {
    c->index_.emplace(t.name, c->tensors_.size());
    c->tensors_.push_back({t.name, Tensor{f.get(), &t}});
  }
  if (f->header().metadata) c->metadata_ = *f->header().metadata;
  c->files_.push_back(std::move(f));
  return c;
}

absl::Status SafetensorsCheckpoint::OpenIndex(const std::string& index_path) {
  path_ = index_path;
  sharded_ = true;
  std::error_code ec;
  const uint64_t size = fs::file_size(index_path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot read '", index_path, "': ", ec.message()));
  if (size > kMaxIndexBytes) {
    return Bad(index_path, absl::StrCat(size, " bytes, too big for an index"));
  }
  std::ifstream in(index_path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    return Bad(index_path, absl::StrCat("not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return Bad(index_path, "the index is not a JSON object");
  if (auto md = root.find("metadata"); md != root.end() && md->is_object()) {
    for (auto it = md->begin(); it != md->end(); ++it) {
      metadata_[it.key()] = it->is_string() ? it->get<std::string>() : it->dump();
    }
  }
  auto map = root.find("weight_map");
  if (map == root.end() || !map->is_object()) {
    return Bad(index_path, "no \"weight_map\" object of tensor name -> shard file");
  }
  const fs::path folder = fs::path(index_path).parent_path();
  std::map<std::string, size_t> file_of;  // shard name -> files_ index
  std::vector<std::string> shard_names;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it->is_string()) {
      return Bad(index_path, absl::StrCat("tensor '", it.key(), "' maps to a ", it->type_name(),
                                          ", not a shard file name"));
    }
    const std::string shard = it->get<std::string>();
    if (!PlainFileName(shard)) {
      return Bad(index_path, absl::StrCat("tensor '", it.key(), "' maps to '", shard,
                                          "', which is not a file name in the folder"));
    }
    if (file_of.count(shard)) continue;
    const std::string shard_path = (folder / shard).string();
    if (!fs::is_regular_file(shard_path, ec)) {
      return absl::NotFoundError(absl::StrCat("'", index_path, "': shard '", shard,
                                              "' (holding tensor '", it.key(),
                                              "') is missing: no file '", shard_path, "'"));
    }
    FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(shard_path));
    file_of[shard] = files_.size();
    files_.push_back(std::move(f));
  }
  for (auto it = map->begin(); it != map->end(); ++it) {
    const SafetensorsFile& f = *files_[file_of[it->get<std::string>()]];
    const SafetensorsTensorInfo* info = f.Find(it.key());
    if (info == nullptr) {
      return Bad(index_path, absl::StrCat("tensor '", it.key(), "' is mapped to '", f.path(),
                                          "', which does not hold it"));
    }
    index_.emplace(it.key(), tensors_.size());
    tensors_.push_back({it.key(), Tensor{&f, info}});
  }
  for (const auto& f : files_) {
    for (const SafetensorsTensorInfo& t : f->tensors()) {
      auto it = index_.find(t.name);
      if (it == index_.end() || tensors_[it->second].second.file != f.get()) {
        return Bad(index_path, absl::StrCat("tensor '", t.name, "' of '", f->path(),
                                            "' is not in the weight map (or mapped to another "
                                            "shard)"));
      }
    }
  }
  return absl::OkStatus();
}

const SafetensorsCheckpoint::Tensor* SafetensorsCheckpoint::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second].second;
}

uint64_t SafetensorsCheckpoint::tensor_bytes() const {
  uint64_t n = 0;
  for (const auto& [name, t] : tensors_) n += t.info->nbytes();
  return n;
}

Dict SafetensorsCheckpoint::StateDict() const {
  Dict d;
  for (const auto& [name, t] : tensors_) {
    TensorRef ref;
    ref.storage_key = name;
    ref.dtype = t.info->dtype;
    ref.sizes = t.info->shape;
    ref.strides = ContiguousStridesOf(t.info->shape);
    ref.storage_numel = t.info->numel();
    d.Set(Value(name), Value(std::move(ref)));
  }
  return d;
}

TensorSource SafetensorsCheckpoint::Source() const {
  return [this](const TensorRef& ref, at::Tensor& dst) -> absl::Status {
    const Tensor* t = Find(ref.storage_key);
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat("'", path_, "': no tensor '", ref.storage_key, "'"));
    }
    return t->file->ReadInto(*t->info, dst);
  };
}

TensorBatchSource SafetensorsCheckpoint::BatchSource() const {
  return [this](std::vector<TensorRead>& reads) -> absl::Status {
    std::map<const SafetensorsFile*, std::vector<ReadRequest>> per_file;
    for (TensorRead& r : reads) {
      const Tensor* t = Find(r.ref.storage_key);
      if (t == nullptr || !ReadsStraightInto(r.ref, r.destination) ||
          static_cast<uint64_t>(r.destination.nbytes()) != t->info->nbytes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "'", path_, "': tensor '", r.ref.storage_key, "' cannot be read straight in"));
      }
      if (t->info->nbytes() == 0) continue;
      per_file[t->file].push_back(ReadRequest{t->file->data_offset() + t->info->begin,
                                              r.destination.data_ptr(),
                                              static_cast<size_t>(t->info->nbytes())});
    }
    for (auto& [file, requests] : per_file) {
      FABRIC_RETURN_IF_ERROR(file->file()->ReadBatch(std::move(requests)));
    }
    return absl::OkStatus();
  };
}

absl::Status WriteSafetensorsIndex(const std::string& folder, uint64_t total_size,
                                   const std::map<std::string, std::string>& weight_map) {
  nlohmann::json root;  // std::map underneath: keys come out sorted
  root["metadata"]["total_size"] = total_size;
  root["weight_map"] = nlohmann::json::object();
  for (const auto& [name, file] : weight_map) root["weight_map"][name] = file;
  std::string text;
  try {
    text = root.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("index of '", folder, "': ", e.what()));
  }
  return AtomicWriteFile((fs::path(folder) / kSafetensorsIndexFileName).string(), text);
}

}  // namespace fabric
