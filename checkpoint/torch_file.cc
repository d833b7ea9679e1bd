// TorchFile: reading torch.save archives (declared in torch_save.h), every
// record checked against the archive's CRC-32 unless asked not to.
#include <algorithm>
#include <functional>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/aligned_empty.h"
#include "checkpoint/crc32.h"
#include "checkpoint/pickle_reader.h"
#include "checkpoint/torch_save.h"

namespace fabric {
namespace {

constexpr size_t kDeviceCopyChunk = 64 << 20;  // bytes read per host->device group
constexpr int kMaxKeyDepth = 64;

int64_t ElementSize(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

// Storage key -> the dotted path of the first tensor on it.
void CollectKeys(const Value& v, const std::string& path, int depth,
                 std::unordered_map<std::string, std::string>& out) {
  if (depth > kMaxKeyDepth) return;
  auto child = [&](const std::string& name) {
    return path.empty() ? name : absl::StrCat(path, ".", name);
  };
  switch (v.kind()) {
    case Value::Kind::kTensorRef:
      out.emplace(v.as_tensor_ref().storage_key, path.empty() ? "<root>" : path);
      return;
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      for (size_t i = 0; i < v.items().size(); ++i) {
        CollectKeys(v.items()[i], child(std::to_string(i)), depth + 1, out);
      }
      return;
    case Value::Kind::kDict:
      for (const auto& [k, item] : v.as_dict()) {
        CollectKeys(item, child(k.is_string() ? k.as_string() : k.DebugString()), depth + 1,
                    out);
      }
      return;
    case Value::Kind::kObject: {
      const Object& o = v.as_object();
      if (o.state) CollectKeys(*o.state, path, depth + 1, out);
      if (o.dict_items) {
        for (const auto& [k, item] : *o.dict_items) {
          CollectKeys(item, child(k.is_string() ? k.as_string() : k.DebugString()), depth + 1,
                      out);
        }
      }
      return;
    }
    default:
      return;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<TorchFile>> TorchFile::Open(const std::string& path,
                                                           const TorchLoadOptions& options) {
  FABRIC_ASSIGN_OR_RETURN(std::shared_ptr<FileReader> file, FileReader::Open(path));
  return Open(std::move(file), 0, std::nullopt, options);
}

absl::StatusOr<std::unique_ptr<TorchFile>> TorchFile::Open(std::shared_ptr<FileReader> file,
                                                           uint64_t offset,
                                                           std::optional<uint64_t> length,
                                                           const TorchLoadOptions& options) {
  std::unique_ptr<TorchFile> f(new TorchFile());
  f->file_ = std::move(file);
  absl::StatusOr<std::unique_ptr<ZipReader>> zip =
      ZipReader::Open(f->file_, offset, length, options.verify_checksums);
  if (!zip.ok()) {  // the reader's message, then what that means here
    return absl::Status(zip.status().code(),
                        absl::StrCat(zip.status().message(),
                                     " (not a torch.save checkpoint in the zip format)"));
  }
  f->zip_ = *std::move(zip);
  if (options.verify_checksums) f->archive_crc32_ = options.archive_crc32;
  FABRIC_RETURN_IF_ERROR(f->Init());
  return f;
}

absl::Status TorchFile::Init() {
  if (zip_->Find("byteorder")) {
    FABRIC_ASSIGN_OR_RETURN(std::string b, zip_->ReadRecord("byteorder"));
    if (b != "little") {
      return absl::UnimplementedError(
          absl::StrCat(path(), ": byte order '", b, "' is not supported (only little)"));
    }
  }
  if (!zip_->Find("data.pkl")) {
    return absl::DataLossError(
        absl::StrCat(path(), ": no data.pkl record; not a torch.save checkpoint"));
  }
  FABRIC_ASSIGN_OR_RETURN(std::string pkl, zip_->ReadRecord("data.pkl"));
  FABRIC_ASSIGN_OR_RETURN(Value root, pickle::Unpickle(pkl, absl::StrCat(path(), ":data.pkl")));
  root_ = std::move(root);
  CollectKeys(root_, "", 0, keys_);
  return absl::OkStatus();
}

std::string TorchFile::KeyOf(const std::string& storage_key) const {
  auto it = keys_.find(storage_key);
  return it == keys_.end() ? absl::StrCat("<storage ", storage_key, ">") : it->second;
}

absl::StatusOr<const ZipReader::Entry*> TorchFile::StorageRecord(const TensorRef& ref) const {
  const std::string name = "data/" + ref.storage_key;
  const std::string key = KeyOf(ref.storage_key);
  const ZipReader::Entry* entry = zip_->Find(name);
  if (!entry) {
    return absl::DataLossError(absl::StrCat(path(), ": key '", key, "': tensor storage record '",
                                            name, "' is missing from the archive"));
  }
  const int64_t item = ElementSize(ref.dtype);
  // In 128 bits: a hostile storage_numel cannot wrap around.
  const unsigned __int128 need = static_cast<unsigned __int128>(ref.storage_numel) * item;
  if (ref.storage_numel < 0 || entry->size < need) {
    return absl::DataLossError(absl::StrCat(path(), ": key '", key, "': storage record '", name,
                                            "' has ", entry->size, " bytes but its tensor needs ",
                                            ref.storage_numel, " elements of ", item, " bytes"));
  }
  // The view must lie inside its storage (in 128 bits: no overflow).
  __int128 last = ref.storage_offset;
  bool empty = false;
  if (ref.sizes.size() != ref.strides.size()) {
    return absl::DataLossError(absl::StrCat(path(), ": key '", key, "': tensor on '", name,
                                            "' has mismatched size and stride ranks"));
  }
  for (size_t i = 0; i < ref.sizes.size(); ++i) {
    if (ref.sizes[i] < 0 || ref.strides[i] < 0) {
      return absl::DataLossError(absl::StrCat(path(), ": key '", key, "': tensor on '", name,
                                              "' has a negative size or stride"));
    }
    if (ref.sizes[i] == 0) empty = true;
    last += static_cast<__int128>(ref.sizes[i] - 1) * ref.strides[i];
  }
  if (!empty && (ref.storage_offset < 0 || last >= ref.storage_numel)) {
    return absl::DataLossError(absl::StrCat(path(), ": key '", key, "': tensor on '", name,
                                            "' reaches past the end of its storage"));
  }
  return entry;
}

absl::Status TorchFile::ReadRecords(const std::vector<RecordRead>& reads) const {
  if (!zip_->verifies()) {
    std::vector<ReadRequest> batch;
    batch.reserve(reads.size());
    for (const RecordRead& r : reads) {
      batch.push_back(ReadRequest{r.entry->data_offset + r.lo, r.dst, r.n});
    }
    return file_->ReadBatch(std::move(batch));
  }
  // Each record as five requests: the archive before the record (only when
  // the archive's own CRC is checked), the record before the wanted bytes,
  // the wanted bytes, the rest of the record, the archive after it.
  const bool whole_archive = archive_crc32_.has_value() && reads.size() == 1;
  std::vector<ReadRequest> batch;
  std::vector<std::unique_ptr<char[]>> scratch;
  batch.reserve(5 * reads.size());
  auto add = [&](uint64_t from, uint64_t to, void* dst) {
    const size_t n = static_cast<size_t>(to - from);
    if (!dst && n > 0) {
      scratch.emplace_back(new char[n]);  // uninitialized: no page zeroing
      dst = scratch.back().get();
    }
    batch.push_back(ReadRequest{from, dst, n});
  };
  const uint64_t archive_begin = zip_->base_offset();
  const uint64_t archive_end = archive_begin + zip_->length();
  for (const RecordRead& r : reads) {
    const uint64_t begin = r.entry->data_offset, end = begin + r.entry->size;
    const uint64_t lo = begin + r.lo, hi = lo + r.n;
    add(whole_archive ? archive_begin : begin, begin, nullptr);
    add(begin, lo, nullptr);
    add(lo, hi, r.dst);
    add(hi, end, nullptr);
    add(end, whole_archive ? archive_end : end, nullptr);
  }
  std::vector<uint32_t> crcs;
  FABRIC_RETURN_IF_ERROR(file_->ReadBatch(std::move(batch), &crcs));
  for (size_t i = 0; i < reads.size(); ++i) {
    const RecordRead& r = reads[i];
    const uint32_t* c = &crcs[5 * i];
    const uint64_t size = r.entry->size, after_lo = size - r.lo;
    uint32_t record = Crc32Combine(c[1], Crc32Combine(c[2], c[3], after_lo - r.n), after_lo);
    FABRIC_RETURN_IF_ERROR(zip_->CheckCrc(*r.entry, record, KeyOf(r.storage_key)));
    if (whole_archive) {
      const uint64_t tail = archive_end - (r.entry->data_offset + size);
      const uint32_t archive =
          Crc32Combine(Crc32Combine(c[0], record, size), c[4], tail);
      if (archive != *archive_crc32_) {
        return absl::DataLossError(absl::StrCat(
            "'", path(), "': CRC-32 mismatch in key '", KeyOf(r.storage_key),
            "' (the item's bytes [", archive_begin, ", ", archive_end,
            ") of the file): the checkpoint's metadata says ",
            absl::Hex(*archive_crc32_, absl::kZeroPad8), ", the file has ",
            absl::Hex(archive, absl::kZeroPad8),
            " (damaged, or a file of another checkpoint)"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Storage> TorchFile::ReadStorage(const TensorRef& ref,
                                                   const c10::Device& device) const {
  FABRIC_ASSIGN_OR_RETURN(const ZipReader::Entry* entry, StorageRecord(ref));
  const int64_t nbytes = ref.storage_numel * ElementSize(ref.dtype);
  at::Tensor bytes = AlignedEmpty({nbytes}, at::kByte);
  FABRIC_RETURN_IF_ERROR(ReadRecords({RecordRead{entry, ref.storage_key, 0,
                                                 nbytes > 0 ? bytes.data_ptr() : nullptr,
                                                 static_cast<size_t>(nbytes)}}));
  if (!device.is_cpu()) bytes = bytes.to(device);
  return bytes.storage();
}

absl::StatusOr<at::Tensor> TorchFile::ReadTensor(const TensorRef& ref,
                                                 const c10::Device& device) const {
  FABRIC_ASSIGN_OR_RETURN(const ZipReader::Entry* entry, StorageRecord(ref));
  at::Tensor out;
  if (ref.is_contiguous()) {
    out = AlignedEmpty(ref.sizes, ref.dtype);
    const uint64_t nbytes = static_cast<uint64_t>(out.numel()) * out.element_size();
    if (nbytes > 0 || zip_->verifies()) {
      const uint64_t lo = nbytes ? static_cast<uint64_t>(ref.storage_offset) * out.element_size()
                                 : 0;
      FABRIC_RETURN_IF_ERROR(ReadRecords({RecordRead{entry, ref.storage_key, lo,
                                                     nbytes ? out.data_ptr() : nullptr,
                                                     static_cast<size_t>(nbytes)}}));
    }
    if (!device.is_cpu()) out = out.to(device);
  } else {
    FABRIC_ASSIGN_OR_RETURN(at::Storage storage, ReadStorage(ref, device));
    out = at::empty({0}, at::TensorOptions().dtype(ref.dtype).device(device));
    out.set_(storage, ref.storage_offset, ref.sizes, ref.strides);
  }
  return out;
}

absl::StatusOr<std::optional<TorchFile::RecordRead>> TorchFile::DirectRead(
    const TensorRef& ref, at::Tensor& dst) const {
  if (dst.sizes() != c10::IntArrayRef(ref.sizes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path(), ": key '", KeyOf(ref.storage_key), "' (record 'data/", ref.storage_key,
        "') has shape [", absl::StrJoin(ref.sizes, ", "), "] but the destination has shape [",
        absl::StrJoin(dst.sizes(), ", "), "]"));
  }
  if (!(dst.device().is_cpu() && dst.is_contiguous() && dst.scalar_type() == ref.dtype &&
        ref.is_contiguous())) {
    return std::nullopt;
  }
  FABRIC_ASSIGN_OR_RETURN(const ZipReader::Entry* entry, StorageRecord(ref));
  const uint64_t nbytes = static_cast<uint64_t>(dst.numel()) * dst.element_size();
  return RecordRead{entry, ref.storage_key,
                    nbytes ? static_cast<uint64_t>(ref.storage_offset) * dst.element_size() : 0,
                    nbytes == 0 ? nullptr : dst.data_ptr(), static_cast<size_t>(nbytes)};
}

absl::Status TorchFile::ReadInto(const TensorRef& ref, at::Tensor& dst) const {
  FABRIC_ASSIGN_OR_RETURN(std::optional<RecordRead> direct, DirectRead(ref, dst));
  if (direct.has_value()) return ReadRecords({*direct});
  FABRIC_ASSIGN_OR_RETURN(at::Tensor t, ReadTensor(ref, c10::kCPU));
  dst.copy_(t);
  return absl::OkStatus();
}

absl::Status TorchFile::ReadIntoMany(std::vector<TensorRead>& reads) const {
  std::vector<RecordRead> batch;
  std::vector<TensorRead*> others;
  for (TensorRead& r : reads) {
    FABRIC_ASSIGN_OR_RETURN(std::optional<RecordRead> direct, DirectRead(r.ref, r.destination));
    if (direct.has_value()) {
      batch.push_back(*std::move(direct));
    } else {
      others.push_back(&r);
    }
  }
  FABRIC_RETURN_IF_ERROR(ReadRecords(batch));
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
  std::vector<RecordRead> batch;
  std::function<absl::Status(const Value&)> collect = [&](const Value& v) -> absl::Status {
    if (v.is_tensor_ref()) {
      const TensorRef& ref = v.as_tensor_ref();
      FABRIC_ASSIGN_OR_RETURN(const ZipReader::Entry* entry, StorageRecord(ref));
      if (storages.count(ref.storage_key) == 0) {
        // The whole record: every ref to it was checked to fit inside it, and
        // refs to one storage may declare different sizes (a smaller first
        // one must not leave a later view reading past the allocation).
        const int64_t nbytes = static_cast<int64_t>(entry->size);
        at::Tensor bytes = AlignedEmpty({nbytes}, at::kByte);
        if (nbytes > 0 || zip_->verifies()) {
          batch.push_back(RecordRead{entry, ref.storage_key, 0,
                                     nbytes ? bytes.data_ptr() : nullptr,
                                     static_cast<size_t>(nbytes)});
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
    FABRIC_RETURN_IF_ERROR(ReadRecords(batch));
  } else {
    for (size_t first = 0; first < batch.size();) {
      size_t last = first;
      uint64_t group_bytes = 0;
      while (last < batch.size() &&
             (last == first || group_bytes + batch[last].n <= kDeviceCopyChunk)) {
        group_bytes += batch[last++].n;
      }
      FABRIC_RETURN_IF_ERROR(ReadRecords({batch.begin() + first, batch.begin() + last}));
      for (size_t i = first; i < last; ++i) {
        at::Tensor& bytes = storages.at(batch[i].storage_key);
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

absl::StatusOr<Value> TorchLoad(const std::string& path, const c10::Device& device,
                                const TorchLoadOptions& options) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> file, TorchFile::Open(path, options));
  return file->Materialize(file->root(), device);
}

}  // namespace fabric
