#include "checkpoint/dcp_writer.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <unordered_map>
#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/byte_sink.h"
#include "checkpoint/crc32.h"
#include "checkpoint/fs_util.h"
#include "checkpoint/pickle_reader.h"
#include "checkpoint/pickle_writer.h"
#include "checkpoint/torch_save.h"

namespace fabric::dcp {
namespace {

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string Dims(const std::vector<int64_t>& v) { return absl::StrCat("[", absl::StrJoin(v, ", "), "]"); }

// Presents the tail of a sink as a stream that starts at 0, so that the zip
// offsets inside each item's archive are relative to the archive's start:
// DCP reads every item as a self-contained file view at its offset.
// It also checksums what passes through: the item's CRC-32 for .metadata
// (StorageInfo::item_crc32), which loads check.
class OffsetSink : public ByteSink {
 public:
  explicit OffsetSink(ByteSink& inner) : inner_(inner), base_(inner.position()) {}
  absl::Status Write(const void* data, size_t n) override {
    crc_ = Crc32(crc_, data, n);
    return inner_.Write(data, n);
  }
  uint64_t position() const override { return inner_.position() - base_; }
  uint32_t crc() const { return crc_; }

 private:
  ByteSink& inner_;
  const uint64_t base_;
  uint32_t crc_ = 0;
};

// The chunk as FileSystemWriter saves it: detached, on CPU, and in a storage
// of exactly its own bytes (torch.save writes whole storages). We always
// make it contiguous too. A contiguous view into a bigger storage (a row
// shard of a larger tensor) is wrapped, not copied: the caller's tensor
// keeps the memory alive while it is written.
at::Tensor ChunkForSave(const at::Tensor& t) {
  at::Tensor c = t.detach();
  if (!c.device().is_cpu()) c = c.to(at::kCPU);
  if (!c.is_contiguous()) return c.clone(at::MemoryFormat::Contiguous);
  if (c.storage_offset() != 0 ||
      c.storage().nbytes() != static_cast<size_t>(c.numel()) * c.element_size()) {
    if (c.numel() == 0) return at::empty(c.sizes(), c.options());
    return at::from_blob(c.data_ptr(), c.sizes(), c.options());
  }
  return c;
}

bool IsPinned(const at::Tensor& t) {
  if (!t.device().is_cpu()) return false;
  try {
    return t.is_pinned();
  } catch (const std::exception&) {
    return false;  // no accelerator runtime to ask
  }
}

absl::Status CheckShard(const WriteItem& item, std::vector<int64_t>* offsets,
                        std::vector<int64_t>* global) {
  const at::Tensor& t = item.tensor;
  const int64_t dim = t.dim();
  *offsets = item.offsets.empty() ? std::vector<int64_t>(dim, 0) : item.offsets;
  *global = item.global_size.empty() ? t.sizes().vec() : item.global_size;
  if (static_cast<int64_t>(offsets->size()) != dim || static_cast<int64_t>(global->size()) != dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "item '", item.fqn, "': chunk of shape ", Dims(t.sizes().vec()), " with offsets ",
        Dims(*offsets), " in a tensor of size ", Dims(*global), " differ in rank"));
  }
  for (int64_t d = 0; d < dim; ++d) {
    if ((*offsets)[d] < 0 || (*offsets)[d] + t.size(d) > (*global)[d]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "item '", item.fqn, "': chunk of shape ", Dims(t.sizes().vec()), " at offsets ",
          Dims(*offsets), " does not fit in a tensor of size ", Dims(*global)));
    }
  }
  return absl::OkStatus();
}

// Tensor items this big start at a 4 KiB offset of their file (zeros before
// them, outside every item): with ZipWriter's 4 KiB alignment of big records,
// their data is then 4 KiB-aligned in the file, and loads can read it with
// O_DIRECT into page-aligned tensors. DCP's readers go by each item's offset.
constexpr uint64_t kAlignedItemMin = uint64_t{1} << 20;
constexpr uint64_t kItemAlignment = 4096;

absl::Status WriteOne(ByteSink& file, const WriteItem& item, const std::string& file_name,
                      WriteResult* r) {
  if (item.is_tensor() && item.tensor.nbytes() >= kAlignedItemMin &&
      file.position() % kItemAlignment != 0) {
    static const std::string zeros(kItemAlignment, '\0');
    FABRIC_RETURN_IF_ERROR_PREFIX(
        file.Write(zeros.data(), kItemAlignment - file.position() % kItemAlignment), "item '",
        item.fqn, "': ");
  }
  const uint64_t start = file.position();
  r->index.fqn = item.fqn;
  r->path = item.path.empty() ? ObjectPath{item.fqn} : item.path;
  absl::Status s;
  if (item.is_tensor()) {
    std::vector<int64_t> offsets, global;
    FABRIC_RETURN_IF_ERROR(CheckShard(item, &offsets, &global));
    if (!StorageClassName(item.tensor.scalar_type()) || !DtypeName(item.tensor.scalar_type())) {
      return absl::UnimplementedError(absl::StrCat("item '", item.fqn, "': dtype ",
                                                   c10::toString(item.tensor.scalar_type()),
                                                   " cannot be saved"));
    }
    r->is_tensor = true;
    r->properties.dtype = item.tensor.scalar_type();
    r->properties.requires_grad = item.tensor.requires_grad();
    r->properties.pin_memory = IsPinned(item.tensor);
    r->global_size = global;
    r->chunk_sizes = item.tensor.sizes().vec();
    r->index.offset = offsets;
    OffsetSink sink(file);
    s = TorchSaveToSink(sink, "archive", Value(ChunkForSave(item.tensor)));
    r->storage.item_crc32 = sink.crc();
  } else if (item.blob) {
    s = file.Write(item.blob->data(), item.blob->size());
    r->storage.item_crc32 = Crc32(0, item.blob->data(), item.blob->size());
  } else if (item.value) {
    OffsetSink sink(file);
    s = TorchSaveToSink(sink, "archive", *item.value);
    r->storage.item_crc32 = sink.crc();
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("item '", item.fqn, "' has neither a tensor, a blob nor a value"));
  }
  FABRIC_RETURN_IF_ERROR_PREFIX(s, "item '", item.fqn, "': ");
  r->storage.relative_path = file_name;
  r->storage.offset = static_cast<int64_t>(start);
  r->storage.length = static_cast<int64_t>(file.position() - start);
  return absl::OkStatus();
}

std::string Uuid4() {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<uint64_t>(rd()) << 32) ^ rd());
  uint64_t hi = gen(), lo = gen();
  hi = (hi & ~uint64_t{0xF000}) | 0x4000;                       // version 4
  lo = (lo & ~(uint64_t{0xC} << 60)) | (uint64_t{0x8} << 60);   // RFC 4122 variant
  return absl::StrFormat("%08x-%04x-%04x-%04x-%012x", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFFF,
                         lo >> 48, lo & 0xFFFFFFFFFFFFull);
}

// Checks a tensor's chunks: in bounds, pairwise disjoint, covering it.
absl::Status ValidateChunks(const std::string& fqn, const TensorStorageMetadata& t) {
  if (t.size.empty()) return absl::OkStatus();  // 0-dim: one chunk, nothing to check
  int64_t total = 1;
  for (int64_t s : t.size) total *= s;
  int64_t covered = 0;
  for (size_t i = 0; i < t.chunks.size(); ++i) {
    const ChunkStorageMetadata& c = t.chunks[i];
    for (size_t d = 0; d < t.size.size(); ++d) {
      if (c.offsets[d] < 0 || c.sizes[d] < 0 || c.offsets[d] + c.sizes[d] > t.size[d]) {
        return absl::InvalidArgumentError(
            absl::StrCat("key '", fqn, "': chunk at ", Dims(c.offsets), " of size ",
                         Dims(c.sizes), " is out of bounds of size ", Dims(t.size)));
      }
    }
    covered += c.numel();
    if (c.numel() == 0) continue;
    for (size_t j = 0; j < i; ++j) {
      const ChunkStorageMetadata& o = t.chunks[j];
      if (o.numel() == 0) continue;
      bool overlap = true;
      for (size_t d = 0; d < t.size.size() && overlap; ++d) {
        overlap = c.offsets[d] < o.offsets[d] + o.sizes[d] && o.offsets[d] < c.offsets[d] + c.sizes[d];
      }
      if (overlap) {
        return absl::InvalidArgumentError(absl::StrCat(
            "key '", fqn, "': chunks at ", Dims(o.offsets), " and ", Dims(c.offsets), " overlap"));
      }
    }
  }
  if (covered != total) {
    return absl::InvalidArgumentError(absl::StrCat("key '", fqn, "': chunks hold ", covered,
                                                   " of the tensor's ", total, " elements"));
  }
  return absl::OkStatus();
}

}  // namespace

WriteItem WriteItem::Tensor(std::string fqn, at::Tensor tensor) {
  WriteItem w;
  w.fqn = std::move(fqn);
  w.tensor = std::move(tensor);
  return w;
}

WriteItem WriteItem::Shard(std::string fqn, at::Tensor tensor, std::vector<int64_t> offsets,
                           std::vector<int64_t> global_size) {
  WriteItem w = Tensor(std::move(fqn), std::move(tensor));
  w.offsets = std::move(offsets);
  w.global_size = std::move(global_size);
  return w;
}

WriteItem WriteItem::Blob(std::string fqn, std::string torch_save_bytes) {
  WriteItem w;
  w.fqn = std::move(fqn);
  w.blob = std::move(torch_save_bytes);
  return w;
}

WriteItem WriteItem::Object(std::string fqn, Value value) {
  WriteItem w;
  w.fqn = std::move(fqn);
  w.value = std::move(value);
  return w;
}

absl::StatusOr<std::vector<WriteResult>> WriteRankFile(const std::string& dir, int rank,
                                                       const std::vector<WriteItem>& items,
                                                       const WriteOptions& options) {
  if (rank < 0) return absl::InvalidArgumentError(absl::StrCat("negative rank ", rank));
  FABRIC_RETURN_IF_ERROR(EnsureDirectory(dir));
  const std::string name = RankFileName(rank);
  const std::string path = JoinPath(dir, name);
  AtomicFileWriter::Options file_options;
  file_options.direct_io = options.direct_io;
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> file,
                          AtomicFileWriter::Create(path, file_options));

  // FileSystemWriter writes a file's bytes items before its tensors.
  std::vector<const WriteItem*> order;
  order.reserve(items.size());
  for (const WriteItem& item : items) {
    if (!item.is_tensor()) order.push_back(&item);
  }
  for (const WriteItem& item : items) {
    if (item.is_tensor()) order.push_back(&item);
  }
  std::vector<WriteResult> results(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    if (absl::Status s = WriteOne(*file, *order[i], name, &results[i]); !s.ok()) {
      file->Abort();
      return PrefixStatus(s, absl::StrCat("writing ", path, ": "));
    }
  }
  FABRIC_RETURN_IF_ERROR(file->Commit());
  return results;
}

absl::StatusOr<Metadata> BuildMetadata(const std::vector<std::vector<WriteResult>>& results_by_rank,
                                       std::optional<StorageMeta> storage_meta) {
  Metadata md;
  md.planner_data.emplace();
  std::unordered_map<std::string, size_t> keys;  // fqn -> position in state_dict_metadata
  for (size_t rank = 0; rank < results_by_rank.size(); ++rank) {
    for (const WriteResult& r : results_by_rank[rank]) {
      const std::string& fqn = r.index.fqn;
      auto [it, fresh] = keys.emplace(fqn, md.state_dict_metadata.size());
      if (fresh) {
        if (r.is_tensor) {
          TensorStorageMetadata t;
          t.properties = r.properties;
          t.size = r.global_size;
          md.state_dict_metadata.emplace_back(fqn, std::move(t));
        } else {
          md.state_dict_metadata.emplace_back(fqn, BytesStorageMetadata{});
        }
        md.planner_data->emplace_back(fqn, r.path.empty() ? ObjectPath{fqn} : r.path);
      }
      StorageMetadata& entry = md.state_dict_metadata[it->second].second;
      auto* t = std::get_if<TensorStorageMetadata>(&entry);
      if ((t != nullptr) != r.is_tensor) {
        return absl::InvalidArgumentError(absl::StrCat(
            "key '", fqn, "' is saved as a tensor by one rank and as bytes by another (rank ",
            rank, ")"));
      }
      MetadataIndex index = r.index;
      if (t) {
        if (t->properties.dtype != r.properties.dtype || t->size != r.global_size) {
          return absl::InvalidArgumentError(absl::StrCat(
              "key '", fqn, "': rank ", rank, " saved a ", c10::toString(r.properties.dtype),
              " tensor of size ", Dims(r.global_size), ", another rank a ",
              c10::toString(t->properties.dtype), " tensor of size ", Dims(t->size)));
        }
        ChunkStorageMetadata chunk{r.index.offset.value_or(std::vector<int64_t>{}), r.chunk_sizes};
        bool duplicate = false;
        for (const ChunkStorageMetadata& c : t->chunks) {
          if (c.offsets != chunk.offsets) continue;
          if (c.sizes != chunk.sizes) {
            return absl::InvalidArgumentError(
                absl::StrCat("key '", fqn, "': two chunks at ", Dims(c.offsets),
                             " differ in size: ", Dims(c.sizes), " and ", Dims(chunk.sizes)));
          }
          duplicate = true;  // replicated: keep the first rank's copy
        }
        if (duplicate) continue;
        index.index = static_cast<int64_t>(t->chunks.size());
        t->chunks.push_back(std::move(chunk));
      } else {
        if (!fresh) continue;  // a value every rank saved: keep the first
        index.offset.reset();
        index.index.reset();
      }
      md.storage_data.emplace_back(std::move(index), r.storage);
    }
  }
  for (const auto& [fqn, entry] : md.state_dict_metadata) {
    if (const auto* t = std::get_if<TensorStorageMetadata>(&entry)) {
      FABRIC_RETURN_IF_ERROR(ValidateChunks(fqn, *t));
    }
  }
  md.storage_meta = std::move(storage_meta);
  md.version = kCurrentVersion;
  return md;
}

StorageMeta NewStorageMeta(const std::string& dir) {
  StorageMeta m;
  m.checkpoint_id = dir;
  m.save_id = Uuid4();
  return m;
}

absl::Status WriteMetadata(const std::string& dir, const Metadata& metadata) {
  FABRIC_ASSIGN_OR_RETURN(std::string bytes, SerializeMetadata(metadata));
  FABRIC_RETURN_IF_ERROR(EnsureDirectory(dir));
  return AtomicWriteFile(JoinPath(dir, kMetadataFileName), bytes);
}

absl::Status PrepareCheckpointDir(const std::string& dir) {
  FABRIC_RETURN_IF_ERROR(EnsureDirectory(dir));
  const std::string path = JoinPath(dir, kMetadataFileName);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("removing ", path, ": ", std::strerror(errno)));
  }
  return FsyncDirectory(dir);
}

namespace {

// Parses "__<rank>_<n>.distcp"; returns the rank or -1.
int64_t RankOfShardFile(std::string_view name) {
  constexpr std::string_view kSuffix = ".distcp";
  if (name.size() < 2 + kSuffix.size() || name.substr(0, 2) != "__" ||
      name.substr(name.size() - kSuffix.size()) != kSuffix) {
    return -1;
  }
  std::string_view mid = name.substr(2, name.size() - 2 - kSuffix.size());
  size_t us = mid.find('_');
  if (us == std::string_view::npos || us == 0 || us + 1 == mid.size()) return -1;
  int64_t rank = 0;
  for (size_t i = 0; i < mid.size(); ++i) {
    if (i == us) continue;
    if (mid[i] < '0' || mid[i] > '9') return -1;
    if (i < us) {
      if (rank > (int64_t{1} << 40)) return -1;
      rank = rank * 10 + (mid[i] - '0');
    }
  }
  return rank;
}

}  // namespace

absl::Status RemoveStaleRankFiles(const std::string& dir, int world_size) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return absl::NotFoundError(absl::StrCat("opening ", dir, ": ", std::strerror(errno)));
  std::vector<std::string> doomed;
  while (dirent* e = ::readdir(d)) {
    std::string_view name(e->d_name);
    // Temp files of AtomicFileWriter: ".__<r>_<n>.distcp.tmp.<pid>.<random>".
    if (name.size() > 1 && name[0] == '.' && name.find(".distcp.tmp.") != std::string_view::npos &&
        RankOfShardFile(name.substr(1, name.find(".tmp.") - 1)) >= 0) {
      doomed.emplace_back(name);
      continue;
    }
    const int64_t rank = RankOfShardFile(name);
    if (rank >= world_size) doomed.emplace_back(name);
  }
  ::closedir(d);
  for (const std::string& name : doomed) {
    const std::string path = JoinPath(dir, name);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return absl::InternalError(absl::StrCat("removing ", path, ": ", std::strerror(errno)));
    }
  }
  if (doomed.empty()) return absl::OkStatus();
  return FsyncDirectory(dir);
}

// ---------------------------------------------------------------------------
// WriteResults as a pickled list of dicts.

namespace {

Value Ints(const std::vector<int64_t>& v) {
  std::vector<Value> items(v.begin(), v.end());
  return Value::Tuple(std::move(items));
}

absl::StatusOr<std::vector<int64_t>> GetInts(const Value& v) {
  if (!v.is_sequence()) return absl::DataLossError("expected a tuple of ints");
  std::vector<int64_t> out;
  for (const Value& x : v.items()) {
    if (!x.is_int()) return absl::DataLossError("expected a tuple of ints");
    out.push_back(x.as_int());
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> EncodeWriteResults(const std::vector<WriteResult>& results) {
  std::vector<Value> list;
  list.reserve(results.size());
  for (const WriteResult& r : results) {
    std::vector<Value> path;
    for (const PathItem& p : r.path) {
      if (const auto* s = std::get_if<std::string>(&p)) {
        path.emplace_back(*s);
      } else {
        path.emplace_back(std::get<int64_t>(p));
      }
    }
    Dict d;
    d.Set("fqn", r.index.fqn);
    d.Set("offset", r.index.offset ? Ints(*r.index.offset) : Value());
    d.Set("path", Value::Tuple(std::move(path)));
    d.Set("file", r.storage.relative_path);
    d.Set("file_offset", r.storage.offset);
    d.Set("length", r.storage.length);
    if (r.storage.item_crc32) d.Set("crc32", static_cast<int64_t>(*r.storage.item_crc32));
    d.Set("tensor", r.is_tensor);
    if (r.is_tensor) {
      d.Set("dtype", static_cast<int64_t>(r.properties.dtype));
      d.Set("requires_grad", r.properties.requires_grad);
      d.Set("pin_memory", r.properties.pin_memory);
      d.Set("size", Ints(r.global_size));
      d.Set("chunk", Ints(r.chunk_sizes));
    }
    list.emplace_back(std::move(d));
  }
  return pickle::Pickle(Value::List(std::move(list)), 2);
}

absl::StatusOr<std::vector<WriteResult>> DecodeWriteResults(std::string_view bytes) {
  FABRIC_ASSIGN_OR_RETURN(Value v, pickle::Unpickle(bytes, "write results"));
  if (!v.is_list()) return absl::DataLossError("write results: not a list");
  std::vector<WriteResult> out;
  auto bad = [](const char* what) {
    return absl::DataLossError(absl::StrCat("write results: bad field '", what, "'"));
  };
  for (const Value& item : v.items()) {
    if (!item.is_dict()) return bad("item");
    const Dict& d = item.as_dict();
    WriteResult r;
    const Value* fqn = d.Find("fqn");
    const Value* file = d.Find("file");
    const Value* off = d.Find("file_offset");
    const Value* len = d.Find("length");
    const Value* tensor = d.Find("tensor");
    const Value* path = d.Find("path");
    if (!fqn || !fqn->is_string()) return bad("fqn");
    if (!file || !file->is_string()) return bad("file");
    if (!off || !off->is_int() || !len || !len->is_int()) return bad("length");
    if (!tensor || !tensor->is_bool()) return bad("tensor");
    if (!path || !path->is_sequence()) return bad("path");
    r.index.fqn = fqn->as_string();
    r.storage.relative_path = file->as_string();
    r.storage.offset = off->as_int();
    r.storage.length = len->as_int();
    r.is_tensor = tensor->as_bool();
    if (const Value* c = d.Find("crc32"); c && c->is_int()) {
      r.storage.item_crc32 = static_cast<uint32_t>(c->as_int());
    }
    for (const Value& p : path->items()) {
      if (p.is_string()) {
        r.path.emplace_back(p.as_string());
      } else if (p.is_int()) {
        r.path.emplace_back(p.as_int());
      } else {
        return bad("path");
      }
    }
    if (const Value* o = d.Find("offset"); o && !o->is_none()) {
      absl::StatusOr<std::vector<int64_t>> ints = GetInts(*o);
      if (!ints.ok()) return bad("offset");
      r.index.offset = *std::move(ints);
    }
    if (r.is_tensor) {
      const Value* dtype = d.Find("dtype");
      const Value* grad = d.Find("requires_grad");
      const Value* pin = d.Find("pin_memory");
      const Value* size = d.Find("size");
      const Value* chunk = d.Find("chunk");
      if (!dtype || !dtype->is_int() || dtype->as_int() < 0 ||
          dtype->as_int() >= static_cast<int64_t>(at::ScalarType::NumOptions)) {
        return bad("dtype");
      }
      if (!grad || !grad->is_bool() || !pin || !pin->is_bool()) return bad("requires_grad");
      if (!size || !chunk) return bad("size");
      absl::StatusOr<std::vector<int64_t>> s = GetInts(*size);
      absl::StatusOr<std::vector<int64_t>> c = GetInts(*chunk);
      if (!s.ok() || !c.ok()) return bad("size");
      r.properties.dtype = static_cast<at::ScalarType>(dtype->as_int());
      r.properties.requires_grad = grad->as_bool();
      r.properties.pin_memory = pin->as_bool();
      r.global_size = *std::move(s);
      r.chunk_sizes = *std::move(c);
      if (!r.index.offset || r.index.offset->size() != r.global_size.size() ||
          r.chunk_sizes.size() != r.global_size.size()) {
        return bad("offset");
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace fabric::dcp
