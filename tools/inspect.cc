#include "tools/inspect.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <system_error>
#include <utility>
#include <variant>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "checkpoint/checkpoint_kind.h"
#include "checkpoint/safetensors_index.h"
#include "tools/progress.h"
#include "tools/inspect_safetensors.h"

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;

constexpr int kMaxDepth = 1000;
constexpr size_t kMaxRepr = 200;

std::string TypeName(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone: return "None";
    case Value::Kind::kBool: return "bool";
    case Value::Kind::kInt: return "int";
    case Value::Kind::kFloat: return "float";
    case Value::Kind::kString: return "str";
    case Value::Kind::kBytes: return "bytes";
    case Value::Kind::kTensor:
    case Value::Kind::kTensorRef: return "torch.Tensor";
    case Value::Kind::kList: return "list";
    case Value::Kind::kTuple: return "tuple";
    case Value::Kind::kDict: return "dict";
    case Value::Kind::kGlobal: return "global";
    case Value::Kind::kObject: return v.as_object().callable.ToString();
  }
  return "?";
}

std::string Repr(const Value& v) {
  std::string r = v.DebugString(8);
  if (r.size() > kMaxRepr) r = r.substr(0, kMaxRepr - 3) + "...";
  return r;
}

bool HoldsTensorOrDict(const Value& v, int depth = 0) {
  if (depth > kMaxDepth) return false;
  if (v.is_tensor() || v.is_tensor_ref() || v.is_dict()) return true;
  if (v.is_sequence()) {
    for (const Value& item : v.items()) {
      if (HoldsTensorOrDict(item, depth + 1)) return true;
    }
  }
  return false;
}

std::string KeyPart(const Value& k) {
  if (k.is_string()) return k.as_string();
  if (k.is_int()) return std::to_string(k.as_int());
  return Repr(k);
}

// Lists the leaves of a loaded tree under flattened keys (DCP's rule: dicts
// always, lists and tuples when they hold tensors or dicts).
absl::Status Walk(const Value& v, const std::string& key, const std::string& source,
                  Inspection& out, int depth = 0) {
  if (depth > kMaxDepth) {
    return absl::DataLossError(absl::StrCat("key '", key, "': nesting deeper than ", kMaxDepth));
  }
  auto join = [&](const std::string& part) { return key.empty() ? part : key + "." + part; };
  if (v.is_dict() && !v.as_dict().empty()) {
    for (const auto& [k, item] : v.as_dict()) {
      FABRIC_RETURN_IF_ERROR(Walk(item, join(KeyPart(k)), source, out, depth + 1));
    }
    return absl::OkStatus();
  }
  if (v.is_sequence() && HoldsTensorOrDict(v)) {
    for (size_t i = 0; i < v.items().size(); ++i) {
      FABRIC_RETURN_IF_ERROR(Walk(v.items()[i], join(std::to_string(i)), source, out, depth + 1));
    }
    return absl::OkStatus();
  }
  if (v.is_tensor_ref()) {
    const TensorRef& r = v.as_tensor_ref();
    TensorEntry t;
    t.key = key;
    t.source = source;
    t.dtype = r.dtype;
    t.shape = r.sizes;
    t.nbytes = static_cast<uint64_t>(r.numel()) * c10::elementSize(r.dtype);
    out.tensor_bytes += t.nbytes;
    out.tensors.push_back(std::move(t));
    return absl::OkStatus();
  }
  if (v.is_tensor()) {
    const at::Tensor& x = v.as_tensor();
    TensorEntry t;
    t.key = key;
    t.source = source;
    t.dtype = x.scalar_type();
    t.shape = x.sizes().vec();
    t.nbytes = x.nbytes();
    out.tensor_bytes += t.nbytes;
    out.tensors.push_back(std::move(t));
    return absl::OkStatus();
  }
  out.objects.push_back({key, source, TypeName(v), Repr(v)});
  return absl::OkStatus();
}

// "__3_0.distcp" -> 3.
std::optional<int> RankOf(const std::string& name) {
  if (!absl::StartsWith(name, "__") || !absl::EndsWith(name, ".distcp")) return std::nullopt;
  const std::string mid = name.substr(2, name.size() - 2 - 7);
  std::vector<std::string> parts = absl::StrSplit(mid, '_');
  int rank = 0, n = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &rank) || !absl::SimpleAtoi(parts[1], &n) ||
      rank < 0) {
    return std::nullopt;
  }
  return rank;
}

std::string DtypeString(at::ScalarType t) {
  std::optional<std::string> n = DtypeName(t);
  return n ? *n : std::string(c10::toString(t));
}

std::string Shape(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

absl::Status InspectSharded(const std::string& dir, const LoadOptions& load, Inspection& out) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<dcp::CheckpointReader> reader,
                          dcp::CheckpointReader::Open(dir, load));
  const dcp::Metadata& md = reader->metadata();
  out.format = "sharded";
  out.detail = absl::StrCat("PyTorch DCP, version ", md.version ? *md.version : "(none)");

  int max_rank = -1;
  std::map<std::string, uint64_t> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (std::optional<int> r = RankOf(name)) {
      max_rank = std::max(max_rank, *r);
      files[name] = e.file_size(ec);
    } else if (name == kMetadataFileName || name == kLightningMetaFile) {
      files[name] = e.file_size(ec);
    }
  }
  // Chunks by (fqn, offsets), for the layout.
  std::map<std::pair<std::string, std::vector<int64_t>>, const dcp::StorageInfo*> where;
  for (const auto& [index, info] : md.storage_data) {
    if (std::optional<int> r = RankOf(info.relative_path)) max_rank = std::max(max_rank, *r);
    where[{index.fqn, index.offset.value_or(std::vector<int64_t>{})}] = &info;
  }
  if (max_rank >= 0) out.world_size = max_rank + 1;
  for (const auto& [name, bytes] : files) out.files.push_back({name, bytes});

  for (const auto& [fqn, smd] : md.state_dict_metadata) {
    if (const auto* t = std::get_if<dcp::TensorStorageMetadata>(&smd)) {
      TensorEntry e;
      e.key = fqn;
      e.source = "dcp";
      e.dtype = t->properties.dtype;
      e.shape = t->size;
      int64_t numel = 1;
      for (int64_t s : t->size) numel *= s;
      e.nbytes = static_cast<uint64_t>(numel) * c10::elementSize(e.dtype);
      for (const auto& c : t->chunks) {
        ChunkLayout l;
        l.offsets = c.offsets;
        l.sizes = c.sizes;
        auto it = where.find({fqn, c.offsets});
        if (it != where.end()) {
          l.file = it->second->relative_path;
          l.offset = it->second->offset;
          l.length = it->second->length;
        }
        e.chunks.push_back(std::move(l));
      }
      out.tensor_bytes += e.nbytes;
      out.tensors.push_back(std::move(e));
    } else {
      FABRIC_ASSIGN_OR_RETURN(const Value v, reader->ReadObject(fqn));
      out.objects.push_back({fqn, "dcp", TypeName(v), Repr(v)});
    }
  }
  const std::string meta_path = LightningMetaPath(dir);
  if (fs::is_regular_file(meta_path, ec)) {
    FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> f, TorchFile::Open(meta_path, load));
    return Walk(f->root(), "", kLightningMetaFile, out);
  }
  return absl::OkStatus();
}

// Invalid UTF-8 (a hostile checkpoint's key, or a repr cut mid-character) is
// replaced by U+FFFD so the output stays valid JSON; valid UTF-8 passes through.
std::string Dump(const nlohmann::ordered_json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace

std::string JsonString(const std::string& s) { return Dump(nlohmann::ordered_json(s)); }

absl::StatusOr<Inspection> Inspect(const std::string& path_arg, const LoadOptions& load) {
  const std::string path = StripTrailingSlashes(path_arg);
  Inspection out;
  out.path = path;
  if (IsSafetensorsPath(path)) {
    FABRIC_RETURN_IF_ERROR(InspectSafetensors(path, out));
    return out;
  }
  FABRIC_ASSIGN_OR_RETURN(const CheckpointKind kind, DetectCheckpointKind(path));
  if (kind == CheckpointKind::kSharded) {
    FABRIC_RETURN_IF_ERROR(InspectSharded(path, load, out));
    return out;
  }
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> f, TorchFile::Open(path, load));
  out.format = "single-file";
  out.detail = absl::StrCat("torch.save zip archive '", f->zip().archive_name(), "'");
  std::error_code ec;
  out.files.push_back({fs::path(path).filename().string(), fs::file_size(path, ec)});
  if (absl::Status s = Walk(f->root(), "", "file", out); !s.ok()) {
    return absl::DataLossError(absl::StrCat("'", path, "': ", s.message()));
  }
  return out;
}

std::string InspectionText(const Inspection& in) {
  std::string r;
  absl::StrAppend(&r, "path:       ", in.path, "\n");
  absl::StrAppend(&r, "format:     ", in.format, " (", in.detail, ")\n");
  absl::StrAppend(&r, "world size: ",
                  in.world_size ? std::to_string(*in.world_size) : "not recorded",
                  "\n");
  absl::StrAppend(&r, "files:\n");
  for (const FileEntry& f : in.files) {
    absl::StrAppend(&r, "  ", f.name, "  ", HumanBytes(f.bytes), "\n");
  }
  absl::StrAppend(&r, "tensors:    ", in.tensors.size(), " (", HumanBytes(in.tensor_bytes),
                  ")\n");
  for (const TensorEntry& t : in.tensors) {
    absl::StrAppend(&r, "  ", t.key, "  ", DtypeString(t.dtype), "  ", Shape(t.shape), "  ",
                    t.nbytes, " B", t.source == "meta.pt" ? "  (meta.pt)" : "", "\n");
    for (const ChunkLayout& c : t.chunks) {
      absl::StrAppend(&r, "      chunk offsets ", Shape(c.offsets), " sizes ", Shape(c.sizes),
                      "  ", c.file.empty() ? "(no storage entry)" : c.file, " @", c.offset, " +",
                      c.length, "\n");
    }
  }
  absl::StrAppend(&r, "objects:    ", in.objects.size(), "\n");
  for (const ObjectEntry& o : in.objects) {
    absl::StrAppend(&r, "  ", o.key, "  ", o.type, "  ", o.repr,
                    o.source == "meta.pt" ? "  (meta.pt)" : "", "\n");
  }
  return r;
}

std::string InspectionJson(const Inspection& in) {
  using Json = nlohmann::ordered_json;  // keeps the fields in the documented order
  Json files = Json::array();
  for (const FileEntry& f : in.files) files.push_back({{"name", f.name}, {"bytes", f.bytes}});
  Json tensors = Json::array();
  for (const TensorEntry& t : in.tensors) {
    Json e = {{"key", t.key},
              {"source", t.source},
              {"dtype", DtypeString(t.dtype)},
              {"shape", t.shape},
              {"bytes", t.nbytes}};
    if (t.source == "dcp") {
      Json chunks = Json::array();
      for (const ChunkLayout& c : t.chunks) {
        chunks.push_back({{"offsets", c.offsets},
                          {"sizes", c.sizes},
                          {"file", c.file},
                          {"offset", c.offset},
                          {"length", c.length}});
      }
      e["chunks"] = std::move(chunks);
    }
    tensors.push_back(std::move(e));
  }
  Json objects = Json::array();
  for (const ObjectEntry& o : in.objects) {
    objects.push_back({{"key", o.key}, {"source", o.source}, {"type", o.type}, {"repr", o.repr}});
  }
  const Json j = {{"path", in.path},
                  {"format", in.format},
                  {"detail", in.detail},
                  {"world_size", in.world_size ? Json(*in.world_size) : Json(nullptr)},
                  {"tensor_bytes", in.tensor_bytes},
                  {"files", std::move(files)},
                  {"tensors", std::move(tensors)},
                  {"objects", std::move(objects)}};
  return Dump(j) + "\n";
}

}  // namespace fabric::tools
