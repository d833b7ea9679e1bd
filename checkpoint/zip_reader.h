// ZipReader: reads the zip container of torch.save files (ours, Python's, or
// any zip of STORED records), also when it is embedded at an offset inside a
// larger file (PyTorch DCP places torch.save archives back to back in one
// .distcp file).
//
// Open() reads only the end records, the central directory (zip64 too) and
// each record's local header, which gives the true data offset (its extra
// field carries the alignment padding). Record data is then read on demand,
// straight into the caller's memory when wanted.
//
// Checksums: with `verify` (the default) every read of a whole record checks
// its bytes against the CRC-32 of the central directory, and Open checks that
// each local header names the record the directory says it does. An archive
// whose records all carry a CRC of 0 was written without checksums (Python's
// torch.serialization.set_crc32_options(False)): it cannot be checked, and
// checksums_recorded() says so.
#ifndef FABRIC_CHECKPOINT_ZIP_READER_H_
#define FABRIC_CHECKPOINT_ZIP_READER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/file_reader.h"

namespace fabric {

class ZipReader {
 public:
  struct Entry {
    std::string name;          // without the "<archive_name>/" prefix
    uint64_t data_offset = 0;  // absolute offset of the data in the file
    uint64_t size = 0;         // uncompressed size
    uint64_t compressed_size = 0;
    uint32_t crc32 = 0;
    uint16_t compression = 0;  // 0: stored, 8: deflated, ...
    uint16_t flags = 0;        // general-purpose bit flags
  };

  // The archive occupies [base_offset, base_offset + length) of the file;
  // length defaults to the rest of the file.
  static absl::StatusOr<std::unique_ptr<ZipReader>> Open(std::shared_ptr<FileReader> file,
                                                         uint64_t base_offset = 0,
                                                         std::optional<uint64_t> length = {},
                                                         bool verify = true);

  // The directory all records live in (torch.save: the file's stem).
  const std::string& archive_name() const { return archive_name_; }
  const std::string& path() const { return file_->path(); }
  const std::shared_ptr<FileReader>& file() const { return file_; }
  const std::vector<Entry>& entries() const { return entries_; }
  // The archive's byte range in the file.
  uint64_t base_offset() const { return base_; }
  uint64_t length() const { return length_; }
  // nullptr if there is no such record.
  const Entry* Find(std::string_view name) const;

  // A whole (small) record, checked against its CRC-32 (unless checks are off).
  absl::StatusOr<std::string> ReadRecord(std::string_view name) const;
  // A whole record into dst, checked when verifying; n must be the record's size.
  absl::Status ReadRecordInto(std::string_view name, void* dst, size_t n) const;
  // Reads the record and checks it against the CRC-32 of the central directory
  // (also when not verifying).
  absl::Status VerifyCrc(std::string_view name) const;

  // Whether reads check CRCs: asked for, and the archive carries them.
  bool verifies() const { return verify_ && checksums_recorded_; }
  bool checksums_recorded() const { return checksums_recorded_; }
  // The CRC-32 of the central directory's bytes: it holds every record's
  // CRC and size, so a checksum of it recorded elsewhere (DCP's .metadata,
  // see dcp_metadata.h) covers the whole archive.
  uint32_t central_directory_crc32() const { return cd_crc32_; }
  // OK if `crc` is the CRC-32 the directory holds for `e` (or when not
  // verifying); otherwise DataLoss naming the file, `key` (the state-dict key
  // the record holds; empty: none), the record and its byte range.
  absl::Status CheckCrc(const Entry& e, uint32_t crc, std::string_view key) const;

 private:
  ZipReader(std::shared_ptr<FileReader> file, uint64_t base, uint64_t length, bool verify)
      : file_(std::move(file)), base_(base), length_(length), verify_(verify) {}
  absl::Status Load();
  absl::StatusOr<const Entry*> Readable(std::string_view name) const;
  absl::Status Corrupt(std::string_view what) const;

  std::shared_ptr<FileReader> file_;
  const uint64_t base_;
  const uint64_t length_;
  const bool verify_;
  bool checksums_recorded_ = false;
  uint32_t cd_crc32_ = 0;
  std::string archive_name_;
  std::vector<Entry> entries_;
  absl::flat_hash_map<std::string, size_t> by_name_;
};

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_ZIP_READER_H_
