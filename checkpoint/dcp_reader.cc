#include "checkpoint/dcp_reader.h"

#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/aligned_empty.h"
#include "checkpoint/crc32.h"
#include "checkpoint/dcp_metadata_check.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/zip_format.h"
#include "checkpoint/zip_reader.h"

namespace fabric::dcp {
namespace {

// Reads of runs shorter than this are merged into one read of the enclosing
// block when that wastes little (see ReadOverlap).
constexpr uint64_t kSmallRunBytes = 64 << 10;
constexpr uint64_t kMaxBlockWaste = 8;  // block bytes / needed bytes

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string Dims(const std::vector<int64_t>& v) {
  return absl::StrCat("[", absl::StrJoin(v, ", "), "]");
}

std::string StorageKey(const std::string& fqn, const std::vector<int64_t>* offsets) {
  std::string key(fqn);
  key += '\0';
  if (offsets) {
    key += absl::StrJoin(*offsets, ",");
  } else {
    key += '-';
  }
  return key;
}

int64_t Volume(const std::vector<int64_t>& sizes) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

// A relative path inside the folder: no absolute paths, no "..".
bool SafeRelativePath(const std::string& p) {
  if (p.empty() || p[0] == '/') return false;
  size_t i = 0;
  while (i <= p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string::npos) j = p.size();
    if (p.compare(i, j - i, "..") == 0) return false;
    i = j + 1;
  }
  return true;
}

}  // namespace

struct CheckpointReader::Chunk {
  const StorageInfo* info = nullptr;
  std::shared_ptr<FileReader> file;
  std::unique_ptr<TorchFile> archive;
  TensorRef ref;
  const ZipReader::Entry* entry = nullptr;  // the storage record, in `archive`
};

CheckpointReader::CheckpointReader(std::string dir, Metadata metadata, ReaderOptions options)
    : dir_(std::move(dir)), metadata_(std::move(metadata)), options_(options) {}

CheckpointReader::~CheckpointReader() = default;

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& dir,
                                                                         ReaderOptions options) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("checkpoint folder not found: ", dir));
  }
  const std::string path = JoinPath(dir, kMetadataFileName);
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("incomplete checkpoint (no .metadata): ", dir));
  }
  FABRIC_ASSIGN_OR_RETURN(std::shared_ptr<FileReader> file, FileReader::Open(path));
  std::string bytes(file->size(), '\0');
  FABRIC_RETURN_IF_ERROR(file->ReadAt(0, bytes.data(), bytes.size()));
  FABRIC_ASSIGN_OR_RETURN(Metadata md, ParseMetadata(bytes, path));
  std::unique_ptr<CheckpointReader> reader(new CheckpointReader(dir, std::move(md), options));
  FABRIC_RETURN_IF_ERROR(reader->Index());
  return reader;
}

absl::Status CheckpointReader::Index() {
  const std::string what = JoinPath(dir_, kMetadataFileName);
  for (size_t i = 0; i < metadata_.state_dict_metadata.size(); ++i) {
    const auto& [fqn, md] = metadata_.state_dict_metadata[i];
    keys_.emplace(fqn, i);
    const auto* t = std::get_if<TensorStorageMetadata>(&md);
    if (!t) continue;
    for (const ChunkStorageMetadata& c : t->chunks) {
      for (size_t d = 0; d < t->size.size(); ++d) {
        if (c.offsets[d] < 0 || c.sizes[d] > t->size[d] - c.offsets[d]) {  // no overflow
          return absl::DataLossError(absl::StrCat(what, ": key '", fqn, "': chunk at ",
                                                  Dims(c.offsets), " of size ", Dims(c.sizes),
                                                  " lies outside the tensor's size ",
                                                  Dims(t->size)));
        }
      }
    }
  }
  for (size_t i = 0; i < metadata_.storage_data.size(); ++i) {
    const auto& [index, info] = metadata_.storage_data[i];
    if (!SafeRelativePath(info.relative_path)) {
      return absl::DataLossError(absl::StrCat(what, ": key '", index.fqn,
                                              "' is stored in a file outside the folder: '",
                                              info.relative_path, "'"));
    }
    storage_[StorageKey(index.fqn, index.offset ? &*index.offset : nullptr)] = i;
  }
  // The metadata against itself and the sizes of the shard files there are.
  FABRIC_ASSIGN_OR_RETURN(std::vector<MetadataItem> items, CheckMetadata(metadata_, what));
  std::map<std::string, uint64_t> sizes;
  for (const auto& [index, info] : metadata_.storage_data) {
    if (sizes.count(info.relative_path)) continue;
    struct stat st;
    if (::stat(JoinPath(dir_, info.relative_path).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      sizes[info.relative_path] = static_cast<uint64_t>(st.st_size);
    }
  }
  return CheckItemRanges(items, sizes, dir_);
}

std::vector<KeyInfo> CheckpointReader::Keys() const {
  std::vector<KeyInfo> out;
  out.reserve(metadata_.state_dict_metadata.size());
  for (const auto& [fqn, md] : metadata_.state_dict_metadata) {
    KeyInfo k;
    k.fqn = fqn;
    if (const auto* t = std::get_if<TensorStorageMetadata>(&md)) {
      k.is_tensor = true;
      k.dtype = t->properties.dtype;
      k.size = t->size;
      k.chunks = t->chunks;
    }
    out.push_back(std::move(k));
  }
  return out;
}

const TensorStorageMetadata* CheckpointReader::FindTensor(const std::string& fqn) const {
  auto it = keys_.find(std::string(fqn));
  if (it == keys_.end()) return nullptr;
  return std::get_if<TensorStorageMetadata>(&metadata_.state_dict_metadata[it->second].second);
}

bool CheckpointReader::IsBytes(const std::string& fqn) const {
  auto it = keys_.find(std::string(fqn));
  return it != keys_.end() &&
         std::holds_alternative<BytesStorageMetadata>(metadata_.state_dict_metadata[it->second].second);
}

absl::Status CheckpointReader::FileError(const StorageInfo& info, const std::string& fqn,
                                         const absl::Status& s) const {
  return PrefixStatus(s, absl::StrCat(JoinPath(dir_, info.relative_path), ": key '", fqn,
                                      "' (bytes ", info.offset, "..", info.offset + info.length,
                                      "): "));
}

absl::StatusOr<std::shared_ptr<FileReader>> CheckpointReader::File(
    const std::string& relative_path, const std::string& fqn) const {
  {
    absl::MutexLock lock(&mu_);
    auto it = files_.find(relative_path);
    if (it != files_.end()) return it->second;
  }
  const std::string path = JoinPath(dir_, relative_path);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat("missing shard file ", path, " (holds key '", fqn, "')"));
  }
  FABRIC_ASSIGN_OR_RETURN_PREFIX(std::shared_ptr<FileReader> file, FileReader::Open(path),
                                 "opening shard file for key '", fqn, "': ");
  absl::MutexLock lock(&mu_);
  return files_.emplace(relative_path, std::move(file)).first->second;
}

absl::StatusOr<const StorageInfo*> CheckpointReader::Storage(
    const std::string& fqn, const std::vector<int64_t>* offsets) const {
  auto it = storage_.find(StorageKey(fqn, offsets));
  if (it == storage_.end()) {
    return absl::DataLossError(absl::StrCat(
        JoinPath(dir_, kMetadataFileName), ": no storage entry for key '", fqn, "'",
        offsets ? absl::StrCat(" chunk at ", Dims(*offsets)) : std::string()));
  }
  const StorageInfo* info = &metadata_.storage_data[it->second].second;
  if (info->transform_descriptors && !info->transform_descriptors->empty()) {
    return absl::UnimplementedError(absl::StrCat(
        JoinPath(dir_, info->relative_path), ": key '", fqn, "' is stored through transforms [",
        absl::StrJoin(*info->transform_descriptors, ", "), "], which are not supported"));
  }
  return info;
}

absl::StatusOr<std::shared_ptr<const CheckpointReader::Chunk>> CheckpointReader::OpenChunk(
    const std::string& fqn, const TensorStorageMetadata& md, size_t chunk_index) const {
  const auto cache_key = std::make_pair(std::string(fqn), chunk_index);
  {
    absl::MutexLock lock(&mu_);
    auto it = chunks_.find(cache_key);
    if (it != chunks_.end()) return it->second;
  }
  const ChunkStorageMetadata& cmd = md.chunks[chunk_index];
  FABRIC_ASSIGN_OR_RETURN(const StorageInfo* info, Storage(fqn, &cmd.offsets));
  auto chunk = std::make_shared<Chunk>();
  chunk->info = info;
  FABRIC_ASSIGN_OR_RETURN(std::shared_ptr<FileReader> file, File(info->relative_path, fqn));
  chunk->file = std::move(file);
  const StorageInfo& si = *info;
  const uint64_t end = static_cast<uint64_t>(si.offset) + static_cast<uint64_t>(si.length);
  if (end > chunk->file->size()) {
    return absl::DataLossError(absl::StrCat(
        "truncated shard file ", chunk->file->path(), ": key '", fqn, "' chunk at ",
        Dims(cmd.offsets), " is stored at bytes ", si.offset, "..", end, " but the file has ",
        chunk->file->size(), " bytes"));
  }
  absl::StatusOr<std::unique_ptr<TorchFile>> archive =
      TorchFile::Open(chunk->file, si.offset, si.length, LoadOptions(si));
  if (!archive.ok()) return FileError(si, fqn, archive.status());
  chunk->archive = *std::move(archive);
  const Value& root = chunk->archive->root();
  if (!root.is_tensor_ref()) {
    return FileError(si, fqn, absl::DataLossError(absl::StrCat(
                                  "expected a saved tensor, found a ", root.kind_name())));
  }
  chunk->ref = root.as_tensor_ref();
  const TensorRef& ref = chunk->ref;
  if (ref.dtype != md.properties.dtype) {
    return FileError(si, fqn, absl::DataLossError(absl::StrCat(
                                  "the saved chunk is ", c10::toString(ref.dtype),
                                  " but the metadata says ", c10::toString(md.properties.dtype))));
  }
  if (ref.sizes != cmd.sizes) {
    return FileError(si, fqn, absl::DataLossError(absl::StrCat(
                                  "the saved chunk has shape ", Dims(ref.sizes),
                                  " but the metadata says ", Dims(cmd.sizes))));
  }
  chunk->entry = chunk->archive->zip().Find("data/" + ref.storage_key);
  if (!chunk->entry) {
    return FileError(si, fqn, absl::DataLossError(absl::StrCat(
                                  "storage record 'data/", ref.storage_key, "' is missing")));
  }
  const uint64_t item = c10::elementSize(ref.dtype);
  if (ref.storage_offset < 0 || ref.storage_numel < 0 ||
      static_cast<uint64_t>(ref.storage_numel) * item > chunk->entry->size ||
      (ref.is_contiguous() && ref.numel() > 0 &&
       ref.storage_offset + ref.numel() > ref.storage_numel)) {
    return FileError(si, fqn, absl::DataLossError(absl::StrCat(
                                  "storage record 'data/", ref.storage_key, "' has ",
                                  chunk->entry->size, " bytes, too few for its tensor")));
  }
  absl::MutexLock lock(&mu_);
  return chunks_.emplace(cache_key, std::move(chunk)).first->second;
}

absl::Status CheckpointReader::ReadOverlap(const std::string& fqn, const Chunk& chunk,
                                           const std::vector<int64_t>& src_lo,
                                           const std::vector<int64_t>& ext,
                                           at::Tensor& view) const {
  const TensorRef& ref = chunk.ref;
  const int64_t nd = static_cast<int64_t>(ext.size());
  auto narrowed = [&](at::Tensor t) {
    for (int64_t d = 0; d < nd; ++d) t = t.narrow(d, src_lo[d], ext[d]);
    return t;
  };
  if (options_.verify_checksums) {
    // A record is checked as a whole: read straight into dst when the overlap
    // is the whole chunk and dst holds it as is, else the chunk into a
    // temporary (checked) and the overlap copied out.
    bool whole = true;
    for (int64_t d = 0; d < nd; ++d) whole = whole && src_lo[d] == 0 && ext[d] == ref.sizes[d];
    if (whole) {
      if (absl::Status s = chunk.archive->ReadInto(ref, view); !s.ok()) {
        return FileError(*chunk.info, fqn, s);
      }
      return absl::OkStatus();
    }
  }
  if (!ref.is_contiguous() || chunk.entry->compression != 0 || options_.verify_checksums) {
    // Python may save a chunk with other strides: read it whole.
    absl::StatusOr<at::Tensor> t = chunk.archive->ReadTensor(ref, c10::kCPU);
    if (!t.ok()) return FileError(*chunk.info, fqn, t.status());
    view.copy_(narrowed(*t));
    return absl::OkStatus();
  }
  const uint64_t item = c10::elementSize(ref.dtype);
  // Large overlaps go slab by slab along dim 0, bounding temporary memory.
  if (nd > 0 && ext[0] > 1) {
    // A row of the chunk bounds both the staging buffer and a block read.
    const uint64_t row =
        std::max<uint64_t>(1, static_cast<uint64_t>(Volume(ref.sizes) / ref.sizes[0]) * item);
    const int64_t rows = static_cast<int64_t>(std::max<uint64_t>(1, options_.slab_bytes / row));
    if (rows < ext[0]) {
      for (int64_t b = 0; b < ext[0]; b += rows) {
        const int64_t n = std::min(rows, ext[0] - b);
        std::vector<int64_t> lo = src_lo, e = ext;
        lo[0] += b;
        e[0] = n;
        at::Tensor part = view.narrow(0, b, n);
        FABRIC_RETURN_IF_ERROR(ReadOverlap(fqn, chunk, lo, e, part));
      }
      return absl::OkStatus();
    }
  }
  std::vector<int64_t> cstride(nd);
  for (int64_t d = nd - 1, acc = 1; d >= 0; --d) {
    cstride[d] = acc;
    acc *= ref.sizes[d];
  }
  // Dims k.. form contiguous runs of the chunk; dims ..k-1 enumerate them.
  int64_t k = nd > 0 ? nd - 1 : 0;
  while (k > 0 && ext[k] == ref.sizes[k]) --k;
  const int64_t run = nd > 0 ? ext[k] * cstride[k] : 1;  // elements
  int64_t runs = 1;
  for (int64_t d = 0; d < k; ++d) runs *= ext[d];
  int64_t first = ref.storage_offset;  // element offset of the overlap's first element
  for (int64_t d = 0; d < nd; ++d) first += src_lo[d] * cstride[d];
  const uint64_t base = chunk.entry->data_offset;
  const FileReader& file = *chunk.file;

  // Many small runs close together: one read of the enclosing block.
  const uint64_t need = static_cast<uint64_t>(run) * runs * item;
  if (runs > 1 && run * item < kSmallRunBytes) {
    const uint64_t block = static_cast<uint64_t>(ext[0]) * cstride[0] * item;
    if (block <= kMaxBlockWaste * need) {
      std::vector<int64_t> shape = ref.sizes;
      shape[0] = ext[0];
      at::Tensor tmp = at::empty(shape, at::TensorOptions().dtype(ref.dtype));
      const int64_t start = ref.storage_offset + src_lo[0] * cstride[0];
      if (absl::Status s = file.ReadAt(base + start * item, tmp.data_ptr(), block); !s.ok()) {
        return FileError(*chunk.info, fqn, s);
      }
      at::Tensor src = tmp;
      for (int64_t d = 1; d < nd; ++d) src = src.narrow(d, src_lo[d], ext[d]);
      view.copy_(src);
      return absl::OkStatus();
    }
  }

  // Straight into dst when each run lands on contiguous memory of it.
  bool direct = view.device().is_cpu() && view.scalar_type() == ref.dtype;
  for (int64_t d = nd - 1, acc = 1; direct && d >= k; --d) {
    if (ext[d] != 1 && view.stride(d) != acc) direct = false;
    acc *= ext[d];
  }
  at::Tensor staging;
  char* out = nullptr;
  if (!direct) {
    staging = at::empty(ext, at::TensorOptions().dtype(ref.dtype));
    out = static_cast<char*>(staging.data_ptr());
  }
  std::vector<int64_t> idx(k, 0);
  for (int64_t r = 0; r < runs; ++r) {
    int64_t src = first;
    char* dst = out + r * run * item;
    if (direct) {
      dst = static_cast<char*>(view.data_ptr());
      for (int64_t d = 0; d < k; ++d) dst += idx[d] * view.stride(d) * static_cast<int64_t>(item);
    }
    for (int64_t d = 0; d < k; ++d) src += idx[d] * cstride[d];
    if (absl::Status s = file.ReadAt(base + src * item, dst, run * item); !s.ok()) {
      return FileError(*chunk.info, fqn, s);
    }
    for (int64_t d = k - 1; d >= 0; --d) {  // odometer over dims 0..k-1
      if (++idx[d] < ext[d]) break;
      idx[d] = 0;
    }
  }
  if (!direct) view.copy_(staging);
  return absl::OkStatus();
}

absl::Status CheckpointReader::ReadRegion(const std::string& fqn,
                                          const std::vector<int64_t>& offsets,
                                          const std::vector<int64_t>& sizes,
                                          at::Tensor& dst) const {
  const TensorStorageMetadata* md = FindTensor(fqn);
  if (!md) {
    if (IsBytes(fqn)) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir_, ": key '", fqn, "' is a bytes value, not a tensor"));
    }
    return absl::NotFoundError(absl::StrCat(dir_, ": no key '", fqn, "' in the checkpoint"));
  }
  const size_t nd = md->size.size();
  if (offsets.size() != nd || sizes.size() != nd) {
    return absl::InvalidArgumentError(
        absl::StrCat("key '", fqn, "': region at ", Dims(offsets), " of size ", Dims(sizes),
                     " does not match the tensor's rank ", nd));
  }
  for (size_t d = 0; d < nd; ++d) {
    if (offsets[d] < 0 || sizes[d] < 0 || offsets[d] + sizes[d] > md->size[d]) {
      return absl::InvalidArgumentError(
          absl::StrCat("key '", fqn, "': region at ", Dims(offsets), " of size ", Dims(sizes),
                       " is outside the saved size ", Dims(md->size)));
    }
  }
  if (!dst.defined() || dst.sizes() != c10::IntArrayRef(sizes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key '", fqn, "': destination has shape ",
        dst.defined() ? Dims(dst.sizes().vec()) : std::string("<undefined>"),
        " but the region has size ", Dims(sizes)));
  }
  const int64_t volume = Volume(sizes);
  if (volume == 0) return absl::OkStatus();

  struct Overlap {
    size_t chunk;
    std::vector<int64_t> lo, ext;
  };
  std::vector<Overlap> overlaps;
  int64_t covered = 0;
  for (size_t i = 0; i < md->chunks.size(); ++i) {
    const ChunkStorageMetadata& c = md->chunks[i];
    Overlap o{i, std::vector<int64_t>(nd), std::vector<int64_t>(nd)};
    bool empty = false;
    for (size_t d = 0; d < nd && !empty; ++d) {
      const int64_t lo = std::max(offsets[d], c.offsets[d]);
      const int64_t hi = std::min(offsets[d] + sizes[d], c.offsets[d] + c.sizes[d]);
      empty = hi <= lo;
      o.lo[d] = lo;
      o.ext[d] = hi - lo;
    }
    if (empty) continue;
    covered += Volume(o.ext);
    overlaps.push_back(std::move(o));
  }
  if (covered != volume) {
    return absl::DataLossError(absl::StrCat(
        dir_, ": key '", fqn, "': the saved chunks ",
        covered < volume ? "do not cover" : "overlap in", " the region at ", Dims(offsets),
        " of size ", Dims(sizes), " (", covered, " of ", volume, " elements)"));
  }
  for (const Overlap& o : overlaps) {
    FABRIC_ASSIGN_OR_RETURN(std::shared_ptr<const Chunk> chunk, OpenChunk(fqn, *md, o.chunk));
    const ChunkStorageMetadata& c = md->chunks[o.chunk];
    std::vector<int64_t> src_lo(nd);
    at::Tensor view = dst;
    for (size_t d = 0; d < nd; ++d) {
      src_lo[d] = o.lo[d] - c.offsets[d];
      view = view.narrow(static_cast<int64_t>(d), o.lo[d] - offsets[d], o.ext[d]);
    }
    FABRIC_RETURN_IF_ERROR(ReadOverlap(fqn, *chunk, src_lo, o.ext, view));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::ReadTensorInto(const std::string& fqn, at::Tensor& dst) const {
  const TensorStorageMetadata* md = FindTensor(fqn);
  if (!md) return ReadRegion(fqn, {}, {}, dst);  // the error for a missing/bytes key
  return ReadRegion(fqn, std::vector<int64_t>(md->size.size(), 0), md->size, dst);
}

absl::StatusOr<at::Tensor> CheckpointReader::ReadTensor(const std::string& fqn,
                                                        const c10::Device& device) const {
  const TensorStorageMetadata* md = FindTensor(fqn);
  at::Tensor t;
  if (md) {
    t = device.is_cpu() ? AlignedEmpty(md->size, md->properties.dtype)
                        : at::empty(md->size, at::TensorOptions().dtype(md->properties.dtype).device(device));
  }
  FABRIC_RETURN_IF_ERROR(ReadTensorInto(fqn, t));
  return t;
}

absl::StatusOr<std::string> CheckpointReader::ReadBytes(const std::string& fqn) const {
  if (!IsBytes(fqn)) {
    if (FindTensor(fqn)) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir_, ": key '", fqn, "' is a tensor, not a bytes value"));
    }
    return absl::NotFoundError(absl::StrCat(dir_, ": no key '", fqn, "' in the checkpoint"));
  }
  FABRIC_ASSIGN_OR_RETURN(const StorageInfo* info, Storage(fqn, nullptr));
  FABRIC_ASSIGN_OR_RETURN(std::shared_ptr<FileReader> file, File(info->relative_path, fqn));
  const uint64_t end = static_cast<uint64_t>(info->offset) + info->length;
  if (end > file->size()) {
    return absl::DataLossError(absl::StrCat("truncated shard file ", file->path(), ": key '",
                                            fqn, "' is stored at bytes ", info->offset, "..",
                                            end, " but the file has ", file->size(),
                                            " bytes"));
  }
  std::string out(info->length, '\0');
  if (absl::Status s = file->ReadAt(info->offset, out.data(), out.size()); !s.ok()) {
    return FileError(*info, fqn, s);
  }
  if (options_.verify_checksums) {
    if (absl::Status s = CheckBytes(*info, fqn, file, out); !s.ok()) {
      return FileError(*info, fqn, s);
    }
  }
  return out;
}

TorchLoadOptions CheckpointReader::LoadOptions(const StorageInfo& info) const {
  TorchLoadOptions o;
  o.verify_checksums = options_.verify_checksums;
  o.archive_crc32 = info.item_crc32;
  return o;
}

absl::Status CheckpointReader::CheckBytes(const StorageInfo& info, const std::string& fqn,
                                          const std::shared_ptr<FileReader>& file,
                                          const std::string& bytes) const {
  if (info.item_crc32) {
    const uint32_t crc = Crc32(0, bytes.data(), bytes.size());
    if (crc != *info.item_crc32) {
      return absl::DataLossError(absl::StrCat(
          "CRC-32 mismatch: the checkpoint's metadata says ",
          absl::Hex(*info.item_crc32, absl::kZeroPad8), ", the file has ",
          absl::Hex(crc, absl::kZeroPad8), " (damaged, or a file of another checkpoint)"));
    }
    return absl::OkStatus();
  }
  // Python's folders: the blob is a torch.save archive (DCP's planner saves
  // every non-tensor value so) whose records carry CRCs; a raw io.BytesIO value
  // carries none and cannot be checked.
  if (bytes.compare(0, zip_format::kLocalHeaderMagic.size(), zip_format::kLocalHeaderMagic) != 0) {
    return absl::OkStatus();
  }
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<ZipReader> zip,
                          ZipReader::Open(file, info.offset, info.length));
  for (const ZipReader::Entry& e : zip->entries()) {
    if (e.compression != 0) continue;  // not ours to read; ReadObject refuses it
    const uint64_t at = e.data_offset - static_cast<uint64_t>(info.offset);
    FABRIC_RETURN_IF_ERROR(zip->CheckCrc(e, Crc32(0, bytes.data() + at, e.size), fqn));
  }
  return absl::OkStatus();
}

absl::StatusOr<Value> CheckpointReader::ReadObject(const std::string& fqn) const {
  FABRIC_RETURN_IF_ERROR(ReadBytes(fqn).status());  // errors for missing keys and files
  FABRIC_ASSIGN_OR_RETURN(const StorageInfo* info, Storage(fqn, nullptr));
  FABRIC_ASSIGN_OR_RETURN(std::shared_ptr<FileReader> file, File(info->relative_path, fqn));
  absl::StatusOr<std::unique_ptr<TorchFile>> archive =
      TorchFile::Open(file, info->offset, info->length, LoadOptions(*info));
  if (!archive.ok()) return FileError(*info, fqn, archive.status());
  absl::StatusOr<Value> v = (*archive)->Materialize((*archive)->root());
  if (!v.ok()) return FileError(*info, fqn, v.status());
  return v;
}

absl::StatusOr<Value> CheckpointReader::ReadStateDict(const c10::Device& device) const {
  std::unordered_map<std::string, const ObjectPath*> paths;
  if (metadata_.planner_data) {
    for (const auto& [fqn, path] : *metadata_.planner_data) paths.emplace(fqn, &path);
  }
  std::vector<FlatEntry> entries;
  entries.reserve(metadata_.state_dict_metadata.size());
  for (const auto& [fqn, md] : metadata_.state_dict_metadata) {
    FlatEntry e;
    e.key = fqn;
    auto it = paths.find(fqn);
    e.path = it != paths.end() && !it->second->empty() ? *it->second : ObjectPath{fqn};
    if (std::holds_alternative<TensorStorageMetadata>(md)) {
      FABRIC_ASSIGN_OR_RETURN(at::Tensor t, ReadTensor(fqn, device));
      e.value = std::move(t);
    } else {
      FABRIC_ASSIGN_OR_RETURN(Value v, ReadObject(fqn));
      e.value = std::move(v);
    }
    entries.push_back(std::move(e));
  }
  return UnflattenStateDict(entries);
}

}  // namespace fabric::dcp
