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

int64_t ElementSize(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

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

absl::StatusOr<std::unique_ptr<TorchFile>> TorchFile::Open(const std::string& path) {
  FABRIC_ASSIGN_OR_RETURN(std::shared_ptr<FileReader> file, FileReader::Open(path));
  return Open(std::move(file), 0, std::nullopt);
}

absl::StatusOr<std::unique_ptr<TorchFile>> TorchFile::Open(std::shared_ptr<FileReader> file,
                                                           uint64_t offset,
                                                           std::optional<uint64_t> length) {
  std::unique_ptr<TorchFile> f(new TorchFile());
  f->file_ = std::move(file);
  absl::StatusOr<std::unique_ptr<ZipReader>> zip = ZipReader::Open(f->file_, offset, length);
  if (!zip.ok()) {  // the reader's message, then what that means here
    return absl::Status(zip.status().code(),
                        absl::StrCat(zip.status().message(),
                                     " (not a torch.save checkpoint in the zip format)"));
  }
  f->zip_ = *std::move(zip);
  FABRIC_RETURN_IF_ERROR(f->Init());
  return f;
}

absl::Status TorchFile::Init() {
  if (const ZipReader::Entry* order = zip_->Find("byteorder")) {
    FABRIC_ASSIGN_OR_RETURN(std::string b, zip_->ReadRecord("byteorder"));
    if (b != "little") {
      return absl::UnimplementedError(
          absl::StrCat(path(), ": byte order '", b, "' is not supported (only little)"));
    }
    (void)order;
  }
  if (!zip_->Find("data.pkl")) {
    return absl::DataLossError(
        absl::StrCat(path(), ": no data.pkl record; not a torch.save checkpoint"));
  }
  FABRIC_ASSIGN_OR_RETURN(std::string pkl, zip_->ReadRecord("data.pkl"));
  FABRIC_ASSIGN_OR_RETURN(Value root, pickle::Unpickle(pkl, absl::StrCat(path(), ":data.pkl")));
  root_ = std::move(root);
  return absl::OkStatus();
}

absl::StatusOr<const ZipReader::Entry*> TorchFile::StorageRecord(const TensorRef& ref) const {
  const std::string name = "data/" + ref.storage_key;
  const ZipReader::Entry* entry = zip_->Find(name);
  if (!entry) {
    return absl::DataLossError(absl::StrCat(path(), ": tensor storage record '", name,
                                            "' is missing from the archive"));
  }
  const int64_t item = ElementSize(ref.dtype);
  // In 128 bits: a hostile storage_numel cannot wrap around.
  const unsigned __int128 need = static_cast<unsigned __int128>(ref.storage_numel) * item;
  if (ref.storage_numel < 0 || entry->size < need) {
    return absl::DataLossError(absl::StrCat(path(), ": storage record '", name, "' has ",
                                            entry->size, " bytes but its tensor needs ",
                                            ref.storage_numel, " elements of ", item, " bytes"));
  }
  // The view must lie inside its storage (in 128 bits: no overflow).
  __int128 last = ref.storage_offset;
  bool empty = false;
  if (ref.sizes.size() != ref.strides.size()) {
    return absl::DataLossError(absl::StrCat(path(), ": tensor on '", name,
                                            "' has mismatched size and stride ranks"));
  }
  for (size_t i = 0; i < ref.sizes.size(); ++i) {
    if (ref.sizes[i] < 0 || ref.strides[i] < 0) {
      return absl::DataLossError(absl::StrCat(path(), ": tensor on '", name,
                                              "' has a negative size or stride"));
    }
    if (ref.sizes[i] == 0) empty = true;
    last += static_cast<__int128>(ref.sizes[i] - 1) * ref.strides[i];
  }
  if (!empty && (ref.storage_offset < 0 || last >= ref.storage_numel)) {
    return absl::DataLossError(absl::StrCat(path(), ": tensor on '", name,
                                            "' reaches past the end of its storage"));
  }
  return entry;
}

absl::StatusOr<at::Storage> TorchFile::ReadStorage(const TensorRef& ref,
                                                   const c10::Device& device) const {
  FABRIC_ASSIGN_OR_RETURN(const ZipReader::Entry* entry, StorageRecord(ref));
  const int64_t nbytes = ref.storage_numel * ElementSize(ref.dtype);
  at::Tensor bytes = at::empty({nbytes}, at::TensorOptions().dtype(at::kByte));
  if (nbytes > 0) {
    FABRIC_RETURN_IF_ERROR(file_->ReadAt(entry->data_offset, bytes.data_ptr(), nbytes));
  }
  if (!device.is_cpu()) bytes = bytes.to(device);
  return bytes.storage();
}

absl::StatusOr<at::Tensor> TorchFile::ReadTensor(const TensorRef& ref,
                                                 const c10::Device& device) const {
  FABRIC_ASSIGN_OR_RETURN(const ZipReader::Entry* entry, StorageRecord(ref));
  at::Tensor out;
  if (ref.is_contiguous()) {
    out = at::empty(ref.sizes, at::TensorOptions().dtype(ref.dtype));
    const uint64_t nbytes = static_cast<uint64_t>(out.numel()) * out.element_size();
    if (nbytes > 0) {
      const uint64_t at_byte = entry->data_offset +
                               static_cast<uint64_t>(ref.storage_offset) * out.element_size();
      FABRIC_RETURN_IF_ERROR(file_->ReadAt(at_byte, out.data_ptr(), nbytes));
    }
    if (!device.is_cpu()) out = out.to(device);
  } else {
    FABRIC_ASSIGN_OR_RETURN(at::Storage storage, ReadStorage(ref, device));
    out = at::empty({0}, at::TensorOptions().dtype(ref.dtype).device(device));
    out.set_(storage, ref.storage_offset, ref.sizes, ref.strides);
  }
  return out;
}

absl::StatusOr<std::optional<ReadRequest>> TorchFile::DirectRead(const TensorRef& ref,
                                                                   at::Tensor& dst) const {
  if (dst.sizes() != c10::IntArrayRef(ref.sizes)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path(), ": tensor 'data/", ref.storage_key, "' has shape [",
                     absl::StrJoin(ref.sizes, ", "), "] but the destination has shape [",
                     absl::StrJoin(dst.sizes(), ", "), "]"));
  }
  if (!(dst.device().is_cpu() && dst.is_contiguous() && dst.scalar_type() == ref.dtype &&
        ref.is_contiguous())) {
    return std::nullopt;
  }
  FABRIC_ASSIGN_OR_RETURN(const ZipReader::Entry* entry, StorageRecord(ref));
  const uint64_t nbytes = static_cast<uint64_t>(dst.numel()) * dst.element_size();
  return ReadRequest{
      entry->data_offset + static_cast<uint64_t>(ref.storage_offset) * dst.element_size(),
      nbytes == 0 ? nullptr : dst.data_ptr(), nbytes};
}

absl::Status TorchFile::ReadInto(const TensorRef& ref, at::Tensor& dst) const {
  FABRIC_ASSIGN_OR_RETURN(std::optional<ReadRequest> direct, DirectRead(ref, dst));
  if (direct.has_value()) return file_->ReadAt(direct->offset, direct->dst, direct->n);
  FABRIC_ASSIGN_OR_RETURN(at::Tensor t, ReadTensor(ref, c10::kCPU));
  dst.copy_(t);
  return absl::OkStatus();
}

absl::Status TorchFile::ReadIntoMany(std::vector<TensorRead>& reads) const {
  std::vector<ReadRequest> batch;
  std::vector<TensorRead*> others;
  for (TensorRead& r : reads) {
    FABRIC_ASSIGN_OR_RETURN(std::optional<ReadRequest> direct, DirectRead(r.ref, r.destination));
    if (direct.has_value()) {
      batch.push_back(*direct);
    } else {
      others.push_back(&r);
    }
  }
  FABRIC_RETURN_IF_ERROR(file_->ReadBatch(std::move(batch)));
  for (TensorRead* r : others) {
    FABRIC_RETURN_IF_ERROR(ReadInto(r->ref, r->destination));
  }
  return absl::OkStatus();
}

absl::StatusOr<Value> TorchFile::Materialize(const Value& value, const c10::Device& device) const {
  // Pass 1: every storage the tree references, checked, allocated on the CPU
  // (address space only until read) and read in one batch. For another device
  // the batch goes in groups of about kDeviceCopyChunk bytes, each moved to the
  // device before the next is read, so that host memory holds one group and
  // not the whole checkpoint.
  std::unordered_map<std::string, at::Tensor> storages;  // key -> byte tensor
  std::vector<ReadRequest> batch;
  std::vector<std::string> batch_keys;  // of `batch`
  std::function<absl::Status(const Value&)> collect = [&](const Value& v) -> absl::Status {
    if (v.is_tensor_ref()) {
      const TensorRef& ref = v.as_tensor_ref();
      FABRIC_ASSIGN_OR_RETURN(const ZipReader::Entry* entry, StorageRecord(ref));
      if (storages.count(ref.storage_key) == 0) {
        // The whole record: every ref to it was checked to fit inside it, and
        // refs to one storage may declare different sizes (a smaller first
        // one must not leave a later view reading past the allocation).
        const int64_t nbytes = static_cast<int64_t>(entry->size);
        at::Tensor bytes = at::empty({nbytes}, at::TensorOptions().dtype(at::kByte));
        if (nbytes > 0) {
          batch.push_back(ReadRequest{entry->data_offset, bytes.data_ptr(),
                                      static_cast<size_t>(nbytes)});
          batch_keys.push_back(ref.storage_key);
        }
        storages.emplace(ref.storage_key, std::move(bytes));
      }
    } else if (v.is_sequence()) {
      for (const Value& item : v.items()) {
        FABRIC_RETURN_IF_ERROR(collect(item));
      }
    } else if (v.is_dict()) {
      for (const auto& [k, item] : v.as_dict()) {
        FABRIC_RETURN_IF_ERROR(collect(item));
      }
    }
    return absl::OkStatus();
  };
  FABRIC_RETURN_IF_ERROR(collect(value));
  if (device.is_cpu()) {
    FABRIC_RETURN_IF_ERROR(file_->ReadBatch(std::move(batch)));
  } else {
    for (size_t first = 0; first < batch.size();) {
      size_t last = first;
      uint64_t group_bytes = 0;
      while (last < batch.size() &&
             (last == first || group_bytes + batch[last].n <= kDeviceCopyChunk)) {
        group_bytes += batch[last++].n;
      }
      FABRIC_RETURN_IF_ERROR(file_->ReadBatch({batch.begin() + first, batch.begin() + last}));
      for (size_t i = first; i < last; ++i) {
        at::Tensor& bytes = storages.at(batch_keys[i]);
        bytes = bytes.to(device);  // frees the host copy
      }
      first = last;
    }
    for (auto& [key, bytes] : storages) {
      if (bytes.device().is_cpu()) bytes = bytes.to(device);  // empty storages
    }
  }

  // Pass 2: the tree with each ref replaced by a view of its storage.
  std::function<Value(const Value&)> build = [&](const Value& v) -> Value {
    switch (v.kind()) {
      case Value::Kind::kTensorRef: {
        const TensorRef& ref = v.as_tensor_ref();
        at::Tensor t = at::empty({0}, at::TensorOptions().dtype(ref.dtype).device(device));
        t.set_(storages.at(ref.storage_key).storage(), ref.storage_offset, ref.sizes,
               ref.strides);
        if (ref.requires_grad && at::isFloatingType(ref.dtype)) t.requires_grad_(true);
        return Value(t);
      }
      case Value::Kind::kList:
      case Value::Kind::kTuple: {
        std::vector<Value> items;
        items.reserve(v.items().size());
        for (const Value& item : v.items()) items.push_back(build(item));
        return v.is_list() ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
      }
      case Value::Kind::kDict: {
        Dict d;
        for (const auto& [k, item] : v.as_dict()) d.Set(k, build(item));
        return Value(std::move(d));
      }
      default:
        return v;
    }
  };
  return build(value);
}

absl::StatusOr<Value> TorchLoad(const std::string& path, const c10::Device& device) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> file, TorchFile::Open(path));
  return file->Materialize(file->root(), device);
}

}  // namespace fabric
