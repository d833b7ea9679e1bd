// ZipWriter: writes the zip container of torch.save files, the layout of
// PyTorch's caffe2::serialize::PyTorchStreamWriter:
//  - every record is STORED (uncompressed) under `<archive_name>/<name>`;
//  - every record's data starts at a multiple of 64 bytes from the start of
//    the archive (the padding is an "FB" extra field in the local header), so
//    a reader can mmap the file and use tensor data in place; records of
//    1 MiB or more at a multiple of 4 KiB, so that loads can read them with
//    O_DIRECT;
//  - zip64 extra fields and end records where sizes, offsets or the number
//    of records do not fit the classic fields (end records always carry a
//    zip64 pair, as PyTorch's do);
//  - CRC-32s filled in; central directory and end records at Finish().
//
// Data is streamed to the sink straight from the caller's memory. Records
// whose data arrives in pieces (BeginRecord/AppendRecordData/EndRecord) carry
// their CRC in a data descriptor after the data (general-purpose flag bit 3),
// since the sink cannot seek back to patch the local header.
//
// Offsets are relative to the archive's start, the sink position at
// construction, so an archive can be embedded in a larger stream (as PyTorch
// DCP does in .distcp files).
#ifndef FABRIC_CHECKPOINT_ZIP_WRITER_H_
#define FABRIC_CHECKPOINT_ZIP_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "checkpoint/byte_sink.h"

namespace fabric {

class ZipWriter {
 public:
  struct Options {
    // Zip64 fields on every record and end record even where not needed, to
    // exercise readers' zip64 paths without writing 4 GiB.
    bool force_zip64 = false;
  };

  // The sink must outlive the writer. archive_name must be non-empty.
  ZipWriter(ByteSink* sink, std::string archive_name);
  ZipWriter(ByteSink* sink, std::string archive_name, Options options);

  ZipWriter(const ZipWriter&) = delete;
  ZipWriter& operator=(const ZipWriter&) = delete;

  // One whole record from memory: CRC first, then header and data.
  absl::Status WriteRecord(std::string_view name, const void* data, size_t n);

  // A record of exactly n bytes supplied by AppendRecordData calls.
  absl::Status BeginRecord(std::string_view name, uint64_t n);
  absl::Status AppendRecordData(const void* data, size_t n);
  absl::Status EndRecord();

  // Writes the central directory and end records. No records after this.
  absl::Status Finish();

  // Archive bytes written so far.
  uint64_t bytes_written() const;
  const std::string& archive_name() const { return archive_name_; }

 private:
  struct Record {
    std::string name;  // full name, with the archive prefix
    uint64_t offset;   // of the local header, from the archive start
    uint64_t size;
    uint32_t crc;
    uint16_t flags;
  };

  absl::Status CheckUsable(std::string_view what) const;
  absl::Status StartRecord(std::string_view name, uint64_t size, uint32_t crc, bool descriptor);
  absl::Status Put(const void* data, size_t n);

  ByteSink* const sink_;
  const std::string archive_name_;
  const Options options_;
  const uint64_t start_;
  std::vector<Record> records_;
  absl::flat_hash_set<std::string> names_;
  absl::Status error_;  // sticky: the first sink error
  bool finished_ = false;

  // The record being written by BeginRecord/AppendRecordData.
  bool open_ = false;
  bool open_zip64_ = false;
  uint64_t open_done_ = 0;
  uint32_t open_crc_ = 0;
};

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_ZIP_WRITER_H_
