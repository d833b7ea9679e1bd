#include "checkpoint/torch_save.h"

#include <algorithm>
#include <random>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/StorageImpl.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/pickle_reader.h"
#include "checkpoint/pickle_writer.h"
#include "checkpoint/zip_writer.h"

namespace fabric {
namespace {

constexpr size_t kDeviceCopyChunk = 64 << 20;  // bytes staged per device->host copy

// torch.save names the archive's top folder after the file: "ckpt.pt" -> "ckpt".
std::string ArchiveName(const std::string& path) {
  std::string base = path;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  if (auto slash = base.rfind('/'); slash != std::string::npos) base = base.substr(slash + 1);
  if (auto dot = base.rfind('.'); dot != std::string::npos && dot > 0) base = base.substr(0, dot);
  return base.empty() ? "archive" : base;
}

std::string SerializationId() {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<uint64_t>(rd()) << 32) ^ rd());
  std::string id;
  while (id.size() < 40) id += std::to_string(gen() % 10);
  return id;
}

std::string LocationOf(const at::Storage& storage) {
  const c10::Device d = storage.device();
  if (d.is_cpu()) return "cpu";
  return d.str();  // "cuda:0", as Python writes it
}

struct StorageRecordInfo {
  std::string key;
  at::Storage storage;
  at::ScalarType dtype;
};

// Assigns "0", "1", ... to storages in order of first appearance; tensors that
// share a storage share its record, as with torch.save.
class StorageTable {
 public:
  absl::StatusOr<pickle::StorageId> Add(const at::Tensor& t) {
    if (!t.defined()) return absl::InvalidArgumentError("cannot save an undefined tensor");
    if (t.is_sparse() || t.layout() != at::kStrided) {
      return absl::UnimplementedError("only dense (strided) tensors can be saved");
    }
    const at::Storage& storage = t.storage();
    const size_t item = t.element_size();
    auto [it, inserted] = index_.emplace(storage.unsafeGetStorageImpl(), records_.size());
    if (inserted) {
      records_.push_back({std::to_string(records_.size()), storage, t.scalar_type()});
    } else if (records_[it->second].dtype != t.scalar_type()) {
      return absl::UnimplementedError(absl::StrCat(
          "two tensors of different dtypes (", c10::toString(records_[it->second].dtype), ", ",
          c10::toString(t.scalar_type()), ") view one storage; save a copy of one of them"));
    }
    const StorageRecordInfo& r = records_[it->second];
    return pickle::StorageId{r.key, LocationOf(storage),
                             static_cast<int64_t>(storage.nbytes() / item)};
  }
  const std::vector<StorageRecordInfo>& records() const { return records_; }

 private:
  std::unordered_map<const c10::StorageImpl*, size_t> index_;
  std::vector<StorageRecordInfo> records_;
};

absl::Status WriteStorage(ZipWriter& zip, const StorageRecordInfo& r) {
  const std::string name = "data/" + r.key;
  const size_t nbytes = r.storage.nbytes();
  if (r.storage.device().is_cpu() || nbytes == 0) {
    return zip.WriteRecord(name, r.storage.data(), nbytes);
  }
  // Device memory: stage through host memory a chunk at a time.
  FABRIC_RETURN_IF_ERROR(zip.BeginRecord(name, nbytes));
  at::Tensor bytes = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(r.storage.device()));
  bytes.set_(r.storage, 0, {static_cast<int64_t>(nbytes)}, {1});
  at::Tensor host = at::empty({static_cast<int64_t>(std::min(nbytes, kDeviceCopyChunk))},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(
                                  r.storage.device().is_cuda()));
  for (size_t done = 0; done < nbytes;) {
    const int64_t n = static_cast<int64_t>(std::min(nbytes - done, kDeviceCopyChunk));
    at::Tensor dst = host.narrow(0, 0, n);
    dst.copy_(bytes.narrow(0, static_cast<int64_t>(done), n));
    FABRIC_RETURN_IF_ERROR(zip.AppendRecordData(dst.data_ptr(), n));
    done += n;
  }
  return zip.EndRecord();
}

// The records torch.save writes before the storages and after them; shared by
// the in-memory and the streaming writer so both produce the same archive.
absl::Status WriteLeadingRecords(ZipWriter& zip, const std::string& pkl) {
  FABRIC_RETURN_IF_ERROR(zip.WriteRecord("data.pkl", pkl.data(), pkl.size()));
  FABRIC_RETURN_IF_ERROR(zip.WriteRecord(".format_version", "1", 1));
  FABRIC_RETURN_IF_ERROR(zip.WriteRecord(".storage_alignment", "64", 2));
  return zip.WriteRecord("byteorder", "little", 6);
}

absl::Status WriteTrailingRecords(ZipWriter& zip) {
  FABRIC_RETURN_IF_ERROR(zip.WriteRecord("version", "3\n", 2));
  const std::string id = SerializationId();
  FABRIC_RETURN_IF_ERROR(zip.WriteRecord(".data/serialization_id", id.data(), id.size()));
  return zip.Finish();
}

AtomicFileWriter::Options FileOptions(const TorchSaveOptions& options) {
  AtomicFileWriter::Options file_options;
  file_options.direct_io = options.direct_io;
  // Larger staging buffers than the writer's default by default: checkpoints
  // are large sequential writes (4 x 32 MiB, two writes in flight;
  // docs/benchmarks.md).
  file_options.buffers = 4;
  file_options.buffer_bytes = std::max<size_t>(options.staging_bytes / 4, 4096);
  return file_options;
}

absl::Status WriteArchive(ByteSink& sink, const std::string& archive_name, const Value& value,
                          const TorchSaveOptions& options) {
  StorageTable table;
  FABRIC_ASSIGN_OR_RETURN(
      const std::string pkl,
      pickle::Pickle(value, [&](const at::Tensor& t) { return table.Add(t); }));

  ZipWriter zip(&sink, archive_name);
  FABRIC_RETURN_IF_ERROR(WriteLeadingRecords(zip, pkl));
  uint64_t total = 0, done = 0;
  for (const auto& r : table.records()) total += r.storage.nbytes();
  for (const auto& r : table.records()) {
    FABRIC_RETURN_IF_ERROR(WriteStorage(zip, r));
    done += r.storage.nbytes();
    if (options.progress) options.progress(done, total);
  }
  return WriteTrailingRecords(zip);
}


}  // namespace

absl::Status TorchSave(const std::string& path, const Value& value,
                       const TorchSaveOptions& options) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> file,
                          AtomicFileWriter::Create(path, FileOptions(options)));
  if (absl::Status s = WriteArchive(*file, ArchiveName(path), value, options); !s.ok()) {
    file->Abort();
    return PrefixStatus(s, absl::StrCat("saving ", path, ": "));
  }
  return file->Commit();
}

absl::Status TorchSaveToSink(ByteSink& sink, const std::string& archive_name,
                             const Value& value) {
  return WriteArchive(sink, archive_name, value, {});
}

TorchStreamWriter::~TorchStreamWriter() {
  if (file_) file_->Abort();
}

absl::StatusOr<std::unique_ptr<TorchStreamWriter>> TorchStreamWriter::Create(
    const std::string& path, const Value& tree, const TorchSaveOptions& options) {
  std::unique_ptr<TorchStreamWriter> w(new TorchStreamWriter());
  // The records, in order of first appearance (the order Python would write).
  std::unordered_map<std::string, uint64_t> seen;
  std::function<void(const Value&)> visit = [&](const Value& v) {
    switch (v.kind()) {
      case Value::Kind::kTensorRef: {
        const TensorRef& r = v.as_tensor_ref();
        if (seen.emplace(r.storage_key, r.storage_nbytes()).second) {
          w->order_.emplace_back(r.storage_key, r.storage_nbytes());
        }
        break;
      }
      case Value::Kind::kList:
      case Value::Kind::kTuple:
        for (const Value& item : v.items()) visit(item);
        break;
      case Value::Kind::kDict:
        for (const auto& [k, item] : v.as_dict()) visit(item);
        break;
      default:
        break;
    }
  };
  visit(tree);
  for (const auto& [key, n] : w->order_) w->total_bytes_ += n;
  w->progress_ = options.progress;

  FABRIC_ASSIGN_OR_RETURN(std::string pkl, pickle::Pickle(tree));
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> file,
                          AtomicFileWriter::Create(path, FileOptions(options)));
  w->file_ = std::move(file);
  w->zip_ = std::make_unique<ZipWriter>(w->file_.get(), ArchiveName(path));
  FABRIC_RETURN_IF_ERROR(WriteLeadingRecords(*w->zip_, pkl));
  return w;
}

absl::Status TorchStreamWriter::Expect(const std::string& key, uint64_t n) {
  if (next_ >= order_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat(file_->path(), ": storage '", key, "' written after all ", order_.size(),
                     " storages were"));
  }
  const auto& [want_key, want_n] = order_[next_];
  if (key != want_key || n != want_n) {
    return absl::FailedPreconditionError(absl::StrCat(
        file_->path(), ": expected storage '", want_key, "' of ", want_n, " bytes next, got '", key,
        "' of ", n, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status TorchStreamWriter::WriteStorage(const std::string& key, const void* data, uint64_t n) {
  FABRIC_RETURN_IF_ERROR(BeginStorage(key, n));
  FABRIC_RETURN_IF_ERROR(AppendStorage(data, n));
  return EndStorage();
}

absl::Status TorchStreamWriter::BeginStorage(const std::string& key, uint64_t n) {
  FABRIC_RETURN_IF_ERROR(Expect(key, n));
  return zip_->BeginRecord("data/" + key, n);
}

absl::Status TorchStreamWriter::AppendStorage(const void* data, uint64_t n) {
  return zip_->AppendRecordData(data, n);
}

absl::Status TorchStreamWriter::EndStorage() {
  FABRIC_RETURN_IF_ERROR(zip_->EndRecord());
  done_bytes_ += order_[next_].second;
  ++next_;
  if (progress_) progress_(done_bytes_, total_bytes_);
  return absl::OkStatus();
}

absl::Status TorchStreamWriter::Commit() {
  if (next_ != order_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(file_->path(), ": only ", next_, " of ",
                                                      order_.size(), " storages were written"));
  }
  absl::Status s = WriteTrailingRecords(*zip_);
  if (s.ok()) s = file_->Commit();
  if (!s.ok()) file_->Abort();
  file_.reset();
  return s;
}

uint64_t StorageBytes(const Value& value) {
  StorageTable table;
  std::vector<const Value*> stack = {&value};
  while (!stack.empty()) {
    const Value* v = stack.back();
    stack.pop_back();
    switch (v->kind()) {
      case Value::Kind::kTensor:
        (void)table.Add(v->as_tensor());
        break;
      case Value::Kind::kList:
      case Value::Kind::kTuple:
        for (const Value& item : v->items()) stack.push_back(&item);
        break;
      case Value::Kind::kDict:
        for (const auto& [k, item] : v->as_dict()) stack.push_back(&item);
        break;
      default:
        break;
    }
  }
  uint64_t total = 0;
  for (const auto& r : table.records()) total += r.storage.nbytes();
  return total;
}

}  // namespace fabric
