// torch.save / torch.load compatible single-file checkpoints.
//
// The file is what Python's torch.save writes: a zip archive of stored records,
// `<archive>/data.pkl` (the pickled object tree, protocol 2), one record
// `<archive>/data/<key>` per tensor storage (raw little-endian bytes, 64-byte
// aligned), and the small `.format_version`, `.storage_alignment`, `byteorder`,
// `version` and `.data/serialization_id` records. Tensor bytes are streamed
// from their storages to the file; nothing holds a second copy of the
// checkpoint in memory.
#ifndef FABRIC_CHECKPOINT_TORCH_SAVE_H_
#define FABRIC_CHECKPOINT_TORCH_SAVE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/byte_sink.h"
#include "checkpoint/file_reader.h"
#include "checkpoint/load_options.h"
#include "checkpoint/tensor_source.h"
#include "checkpoint/value.h"
#include "checkpoint/zip_reader.h"

namespace fabric {

struct TorchSaveOptions {
  // Write through O_DIRECT with staging buffers (falls back to buffered I/O
  // where the filesystem does not support it).
  bool direct_io = true;
  // Memory for the aligned staging buffers of direct I/O, split in four (two
  // being written while the caller fills a third). Writers that promise a
  // memory bound (full FSDP saves, consolidation) ask for less.
  size_t staging_bytes = size_t{128} << 20;
  // Called after each storage record with bytes written so far and the total.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

// Saves `value` to `path` atomically: a temporary file in the same folder,
// fsync, rename, fsync of the folder. On any failure the previous file at
// `path`, if any, is untouched.
absl::Status TorchSave(const std::string& path, const Value& value,
                       const TorchSaveOptions& options = {});

// Writes the archive onto `sink` at its current position (used for the
// archives that distributed checkpoints place back to back in one file).
absl::Status TorchSaveToSink(ByteSink& sink, const std::string& archive_name,
                             const Value& value);

// Writes a torch.save archive whose tensor bytes arrive one storage at a time,
// so that a checkpoint larger than memory (a consolidation, a full-state save
// gathered unit by unit) streams to disk. The object tree is given up front
// with TensorRef leaves: their storage_key, dtype and storage_numel describe
// the records, which must then be written in the order of first appearance in
// the tree (StorageOrder lists it), each exactly storage_numel * itemsize bytes.
class TorchStreamWriter {
 public:
  static absl::StatusOr<std::unique_ptr<TorchStreamWriter>> Create(
      const std::string& path, const Value& tree, const TorchSaveOptions& options = {});
  ~TorchStreamWriter();

  // Storage keys with their byte sizes, in the order they must be written.
  const std::vector<std::pair<std::string, uint64_t>>& StorageOrder() const { return order_; }

  // The next storage in one piece, or in pieces with Begin/Append/End.
  absl::Status WriteStorage(const std::string& key, const void* data, uint64_t n);
  absl::Status BeginStorage(const std::string& key, uint64_t n);
  absl::Status AppendStorage(const void* data, uint64_t n);
  absl::Status EndStorage();

  // Writes the trailing records and atomically publishes the file. Without a
  // Commit (an error, a crash) nothing appears at `path`.
  absl::Status Commit();

 private:
  TorchStreamWriter() = default;
  absl::Status Expect(const std::string& key, uint64_t n);

  std::unique_ptr<AtomicFileWriter> file_;
  std::unique_ptr<class ZipWriter> zip_;
  std::vector<std::pair<std::string, uint64_t>> order_;
  size_t next_ = 0;
  uint64_t done_bytes_ = 0, total_bytes_ = 0;
  std::function<void(uint64_t, uint64_t)> progress_;
};

// Total bytes of tensor storages `value` references (each storage once).
uint64_t StorageBytes(const Value& value);

struct TorchLoadOptions {
  TorchLoadOptions() = default;
  TorchLoadOptions(const LoadOptions& o)  // NOLINT(runtime/explicit): widens LoadOptions
      : verify_checksums(o.verify_checksums) {}

  // Check every record read against the CRC-32 of the archive's central
  // directory (data.pkl at Open, each storage as it is read; a storage read
  // only in part is read whole to be checked). A mismatch is DataLoss naming
  // the file, the state-dict key and the byte range.
  bool verify_checksums = true;
  // The CRC-32 of the archive's whole byte range, where something outside
  // the archive records it (our DCP .metadata, StorageInfo::item_crc32). A
  // read of one record then reads the whole archive and checks this too:
  // headers, padding and directory are covered, and an archive of another
  // checkpoint in its place is refused.
  std::optional<uint32_t> archive_crc32;
};

// A torch.save archive opened for reading. The object tree is parsed at Open;
// tensors stay in the file as TensorRefs until read, so a caller can read them
// straight into existing parameters, or only the ones it needs. Implemented in
// torch_file.cc.
class TorchFile {
 public:
  static absl::StatusOr<std::unique_ptr<TorchFile>> Open(const std::string& path,
                                                         const TorchLoadOptions& options = {});
  // An archive embedded in a larger file at [offset, offset + length).
  static absl::StatusOr<std::unique_ptr<TorchFile>> Open(std::shared_ptr<FileReader> file,
                                                         uint64_t offset,
                                                         std::optional<uint64_t> length,
                                                         const TorchLoadOptions& options = {});

  const std::string& path() const { return file_->path(); }
  // The unpickled object tree; tensors are kTensorRef.
  const Value& root() const { return root_; }
  const ZipReader& zip() const { return *zip_; }
  // The state-dict key (dotted path in the object tree, "model.fc.weight")
  // of the first tensor on storage `storage_key`, for messages.
  std::string KeyOf(const std::string& storage_key) const;

  // Reads one tensor into a new tensor on `device` (Python's map_location).
  absl::StatusOr<at::Tensor> ReadTensor(const TensorRef& ref,
                                        const c10::Device& device = c10::kCPU) const;
  // Reads a tensor into `dst`, which must have the same shape. Bytes go
  // straight into dst's memory when it is a contiguous CPU tensor of the same
  // dtype; otherwise through a temporary and dst.copy_() (casts, devices).
  absl::Status ReadInto(const TensorRef& ref, at::Tensor& dst) const;
  // ReadInto for many tensors: those whose bytes go straight into their
  // destination are read together (FileReader::ReadBatch), the rest one by one.
  absl::Status ReadIntoMany(std::vector<TensorRead>& reads) const;

  // Replaces every TensorRef in `value` by a tensor on `device`. Tensors that
  // share a storage in the file share one in memory, as with torch.load. All
  // storages are read in one batch.
  absl::StatusOr<Value> Materialize(const Value& value,
                                    const c10::Device& device = c10::kCPU) const;

 private:
  TorchFile() = default;
  absl::Status Init();
  // The record of a storage, checked against the size the ref needs.
  absl::StatusOr<const ZipReader::Entry*> StorageRecord(const TensorRef& ref) const;
  absl::StatusOr<at::Storage> ReadStorage(const TensorRef& ref,
                                          const c10::Device& device) const;
  // Bytes [lo, lo + n) of a storage record into dst.
  struct RecordRead {
    const ZipReader::Entry* entry;
    std::string storage_key;
    uint64_t lo;
    void* dst;
    size_t n;
  };
  // Where ReadInto would put the bytes straight into dst: the read for it.
  absl::StatusOr<std::optional<RecordRead>> DirectRead(const TensorRef& ref,
                                                       at::Tensor& dst) const;
  // Reads them all in one batch. When verifying, the rest of each record
  // (outside [lo, lo + n)) is read too, into scratch memory, and each record's
  // CRC-32 is checked; CRCs are computed by the reading threads.
  absl::Status ReadRecords(const std::vector<RecordRead>& reads) const;

  std::shared_ptr<FileReader> file_;
  std::unique_ptr<ZipReader> zip_;
  std::optional<uint32_t> archive_crc32_;
  Value root_;
  std::unordered_map<std::string, std::string> keys_;  // storage key -> state-dict key
};

// torch.load(path, map_location=device): everything read into memory.
absl::StatusOr<Value> TorchLoad(const std::string& path, const c10::Device& device = c10::kCPU,
                                const TorchLoadOptions& options = {});

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_TORCH_SAVE_H_
