#include "checkpoint/zip_reader.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/absl_view.h"
#include "base/status_macros.h"
#include "checkpoint/crc32.h"
#include "checkpoint/little_endian.h"
#include "checkpoint/zip_format.h"

namespace fabric {
namespace {

using little_endian::Load16;
using little_endian::Load32;
using little_endian::Load64;
using namespace zip_format;  // NOLINT: the format's constants, read field by field below

absl::Status CrcMismatch(const std::string& path, std::string_view name, uint32_t stored,
                         uint32_t got) {
  return absl::DataLossError(absl::StrCat("'", path, "': CRC-32 mismatch in record '", AbslView(name),
                                          "': stored ", absl::Hex(stored), ", data has ",
                                          absl::Hex(got)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ZipReader>> ZipReader::Open(std::shared_ptr<FileReader> file,
                                                           uint64_t base_offset,
                                                           std::optional<uint64_t> length,
                                                           bool verify) {
  if (!file) return absl::InvalidArgumentError("ZipReader::Open: no file");
  const uint64_t size = file->size();
  if (base_offset > size || (length && *length > size - base_offset)) {
    return absl::OutOfRangeError(absl::StrCat(
        "truncated file '", file->path(), "': zip archive at offset ", base_offset, " of ",
        length ? absl::StrCat(*length, " bytes") : std::string("unknown length"),
        " extends past the end of the file (", size, " bytes)"));
  }
  const uint64_t len = length ? *length : size - base_offset;
  std::unique_ptr<ZipReader> r(new ZipReader(std::move(file), base_offset, len, verify));
  FABRIC_RETURN_IF_ERROR(r->Load());
  return r;
}

absl::Status ZipReader::Corrupt(std::string_view what) const {
  return absl::DataLossError(absl::StrCat("'", path(), "'",
                                          base_ ? absl::StrCat(" (archive at offset ", base_, ")")
                                                : std::string(),
                                          ": ", AbslView(what)));
}

absl::Status ZipReader::Load() {
  // End of central directory record: the last 22 bytes, unless a comment
  // (at most 64 KiB) follows it.
  if (length_ < kEndSize) {
    return Corrupt(absl::StrCat("not a zip archive (", length_, " bytes, too small)"));
  }
  const uint64_t tail_len = std::min<uint64_t>(length_, kEndSize + kMax16);
  std::string tail(tail_len, '\0');
  FABRIC_RETURN_IF_ERROR(file_->ReadAt(base_ + length_ - tail_len, tail.data(), tail_len));
  int64_t end_at = -1;  // in tail
  for (int64_t i = static_cast<int64_t>(tail_len - kEndSize); i >= 0; --i) {
    if (Load32(&tail[i]) == kEndSig &&
        static_cast<uint64_t>(i) + kEndSize + Load16(&tail[i + kEndCommentLenAt]) == tail_len) {
      end_at = i;
      break;
    }
  }
  if (end_at < 0) {
    return Corrupt("not a zip archive (no end of central directory record; truncated?)");
  }
  const char* e = &tail[end_at];
  const uint64_t end_pos = length_ - tail_len + static_cast<uint64_t>(end_at);  // archive-relative
  uint64_t count = Load16(e + kEndCountAt);
  uint64_t cd_size = Load32(e + kEndCdSizeAt);
  uint64_t cd_offset = Load32(e + kEndCdOffsetAt);
  if (Load16(e + kEndDiskAt) != 0 || Load16(e + kEndCdDiskAt) != 0 ||
      Load16(e + kEndDiskCountAt) != Load16(e + kEndCountAt)) {
    return Corrupt("multi-disk zip archives are not supported");
  }

  // Zip64: a locator just before the end record points at the zip64 end record.
  bool zip64 = false;
  if (end_pos >= kZip64LocatorSize + kZip64EndSize) {
    char loc[kZip64LocatorSize];
    FABRIC_RETURN_IF_ERROR(file_->ReadAt(base_ + end_pos - kZip64LocatorSize, loc, sizeof(loc)));
    if (Load32(loc) == kZip64LocatorSig) {
      // The locator's offset is archive-relative; an archive that was moved
      // after writing still has its zip64 record right before the locator.
      char rec[kZip64EndSize];
      bool found = false;
      for (uint64_t at : {Load64(loc + kZip64LocatorEndOffsetAt),
                          end_pos - kZip64LocatorSize - kZip64EndSize}) {
        if (at > end_pos - kZip64LocatorSize - kZip64EndSize) continue;
        FABRIC_RETURN_IF_ERROR(file_->ReadAt(base_ + at, rec, sizeof(rec)));
        if (Load32(rec) == kZip64EndSig) {
          found = true;
          break;
        }
      }
      if (!found) return Corrupt("zip64 end of central directory record not found");
      count = Load64(rec + kZip64EndCountAt);
      cd_size = Load64(rec + kZip64EndCdSizeAt);
      cd_offset = Load64(rec + kZip64EndCdOffsetAt);
      zip64 = true;
    }
  }
  if (!zip64 && (count == kMax16 || cd_size == kMax32 || cd_offset == kMax32)) {
    return Corrupt("zip64 archive without a zip64 end of central directory record");
  }
  if (cd_offset > end_pos || cd_size > end_pos - cd_offset) {
    return Corrupt(absl::StrCat("central directory (offset ", cd_offset, ", ", cd_size,
                                " bytes) lies outside the archive (truncated?)"));
  }
  if (count > cd_size / kCentralHeaderSize) {
    return Corrupt(absl::StrCat("central directory of ", cd_size, " bytes cannot hold ", count,
                                " records"));
  }

  std::string cd(cd_size, '\0');
  FABRIC_RETURN_IF_ERROR(file_->ReadAt(base_ + cd_offset, cd.data(), cd_size));
  cd_crc32_ = Crc32(0, cd.data(), cd.size());
  entries_.reserve(count);
  std::vector<uint64_t> header_offsets;
  header_offsets.reserve(count);
  size_t p = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (cd_size - p < kCentralHeaderSize || Load32(&cd[p]) != kCentralHeaderSig) {
      return Corrupt(absl::StrCat("central directory entry ", i, " of ", count, " is damaged"));
    }
    const char* h = &cd[p];
    Entry entry;
    entry.flags = Load16(h + kCentralFlagsAt);
    entry.compression = Load16(h + kCentralMethodAt);
    entry.crc32 = Load32(h + kCentralCrcAt);
    entry.compressed_size = Load32(h + kCentralCompressedSizeAt);
    entry.size = Load32(h + kCentralSizeAt);
    const size_t name_len = Load16(h + kCentralNameLenAt);
    const size_t extra_len = Load16(h + kCentralExtraLenAt);
    const size_t comment_len = Load16(h + kCentralCommentLenAt);
    uint64_t header_offset = Load32(h + kCentralHeaderOffsetAt);
    if (cd_size - p < kCentralHeaderSize + name_len + extra_len + comment_len) {
      return Corrupt(absl::StrCat("central directory entry ", i, " of ", count, " is truncated"));
    }
    std::string full(h + kCentralHeaderSize, name_len);
    // Zip64 extended information: 8-byte values for the saturated fields, in
    // this order.
    const char* x = h + kCentralHeaderSize + name_len;
    for (size_t k = 0; k + 4 <= extra_len;) {
      const uint16_t id = Load16(x + k);
      const size_t n = Load16(x + k + 2);
      if (k + 4 + n > extra_len) break;
      if (id == kZip64ExtraId) {
        const char* v = x + k + 4;
        size_t left = n;
        auto take = [&](uint64_t* field) {
          if (*field != kMax32) return true;
          if (left < 8) return false;
          *field = Load64(v);
          v += 8;
          left -= 8;
          return true;
        };
        if (!take(&entry.size) || !take(&entry.compressed_size) || !take(&header_offset)) {
          return Corrupt(absl::StrCat("record '", full, "' has a short zip64 extra field"));
        }
      }
      k += 4 + n;
    }
    p += kCentralHeaderSize + name_len + extra_len + comment_len;

    if (i == 0) {
      const size_t slash = full.find('/');
      if (slash == std::string::npos || slash == 0) {
        return Corrupt(absl::StrCat("record '", full,
                                    "' is not inside an archive directory (not a torch.save "
                                    "archive)"));
      }
      archive_name_ = full.substr(0, slash);
    }
    if (full.size() <= archive_name_.size() ||
        full.compare(0, archive_name_.size(), archive_name_) != 0 ||
        full[archive_name_.size()] != '/') {
      return Corrupt(absl::StrCat("record '", full, "' is outside the archive directory '",
                                  archive_name_, "/'"));
    }
    entry.name = full.substr(archive_name_.size() + 1);
    if (header_offset > cd_offset) {
      return Corrupt(absl::StrCat("record '", entry.name, "' has its header at offset ",
                                  header_offset, ", past the central directory"));
    }
    header_offsets.push_back(header_offset);
    entries_.push_back(std::move(entry));
  }

  // The data follows each local header, whose name and extra field (the
  // alignment padding) may differ in length from the central directory's.
  // The header must name the record the directory says it holds, and, unless
  // a data descriptor follows the data, agree on its CRC and sizes.
  std::string h;
  for (size_t i = 0; i < entries_.size(); ++i) {
    Entry& entry = entries_[i];
    const std::string full = absl::StrCat(archive_name_, "/", entry.name);
    if (header_offsets[i] > cd_offset ||
        kLocalHeaderSize + full.size() > cd_offset - header_offsets[i]) {
      return Corrupt(absl::StrCat("record '", entry.name, "' local header is out of range"));
    }
    h.resize(kLocalHeaderSize + full.size());
    FABRIC_RETURN_IF_ERROR(file_->ReadAt(base_ + header_offsets[i], h.data(), h.size()));
    if (Load32(h.data()) != kLocalHeaderSig) {
      return Corrupt(absl::StrCat("record '", entry.name, "': no local header at offset ",
                                  header_offsets[i]));
    }
    const uint16_t local_flags = Load16(h.data() + kLocalFlagsAt);
    const bool sizes_here = !(local_flags & kFlagDescriptor);
    if (Load16(h.data() + kLocalNameLenAt) != full.size() ||
        h.compare(kLocalHeaderSize, full.size(), full) != 0 ||
        Load16(h.data() + kLocalMethodAt) != entry.compression ||
        (sizes_here && verify_ &&
         (Load32(h.data() + kLocalCrcAt) != entry.crc32 ||
          (Load32(h.data() + kLocalSizeAt) != kMax32 &&
           Load32(h.data() + kLocalSizeAt) != entry.size)))) {
      return Corrupt(absl::StrCat("record '", entry.name, "': its local header (offset ",
                                  header_offsets[i],
                                  ") does not match the central directory's entry"));
    }
    const uint64_t data = header_offsets[i] + kLocalHeaderSize + Load16(h.data() + kLocalNameLenAt) +
                          Load16(h.data() + kLocalExtraLenAt);
    if (data > cd_offset || entry.compressed_size > cd_offset - data) {
      return Corrupt(absl::StrCat("record '", entry.name, "' (", entry.compressed_size,
                                  " bytes at offset ", data,
                                  ") extends past the central directory (truncated?)"));
    }
    entry.data_offset = base_ + data;
    by_name_[entry.name] = i;  // a later duplicate wins, as in Python's zipfile
    if (entry.crc32 != 0) checksums_recorded_ = true;
  }

  // No two records may share bytes (a crafted directory could otherwise make
  // one small file read as many large records: a zip bomb of overlaps).
  std::vector<size_t> order(entries_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return header_offsets[a] < header_offsets[b]; });
  for (size_t k = 1; k < order.size(); ++k) {
    const Entry& prev = entries_[order[k - 1]];
    const uint64_t prev_end = prev.data_offset - base_ + prev.compressed_size;
    if (header_offsets[order[k]] < prev_end) {
      return Corrupt(absl::StrCat("records '", prev.name, "' and '", entries_[order[k]].name,
                                  "' overlap"));
    }
  }
  return absl::OkStatus();
}

const ZipReader::Entry* ZipReader::Find(std::string_view name) const {
  auto it = by_name_.find(AbslView(name));
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

absl::StatusOr<const ZipReader::Entry*> ZipReader::Readable(std::string_view name) const {
  const Entry* e = Find(name);
  if (!e) {
    return absl::NotFoundError(absl::StrCat("'", path(), "': no record '", AbslView(name),
                                            "' in archive '", archive_name_, "'"));
  }
  if (e->flags & kFlagEncrypted) {
    return absl::UnimplementedError(
        absl::StrCat("'", path(), "': record '", AbslView(name), "' is encrypted"));
  }
  if (e->compression != 0 || e->compressed_size != e->size) {
    return absl::UnimplementedError(absl::StrCat(
        "'", path(), "': record '", AbslView(name), "' is compressed (method ", e->compression,
        "); only stored (uncompressed) records are supported, as torch.save writes them"));
  }
  return e;
}

absl::StatusOr<std::string> ZipReader::ReadRecord(std::string_view name) const {
  FABRIC_ASSIGN_OR_RETURN(const Entry* e, Readable(name));
  std::string out(e->size, '\0');
  FABRIC_RETURN_IF_ERROR(ReadRecordInto(name, out.data(), out.size()));
  return out;
}

absl::Status ZipReader::ReadRecordInto(std::string_view name, void* dst, size_t n) const {
  FABRIC_ASSIGN_OR_RETURN(const Entry* e, Readable(name));
  if (e->size != n) {
    return absl::InvalidArgumentError(absl::StrCat("'", path(), "': record '", AbslView(name),
                                                   "' has ", e->size, " bytes, not ", n));
  }
  if (!verifies()) return file_->ReadAt(e->data_offset, dst, n);
  std::vector<uint32_t> crc;
  FABRIC_RETURN_IF_ERROR(file_->ReadBatch({ReadRequest{e->data_offset, dst, n}}, &crc));
  return CheckCrc(*e, crc[0], "");
}

absl::Status ZipReader::CheckCrc(const Entry& e, uint32_t crc, std::string_view key) const {
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // fuzzers could not reach past a CRC
  return absl::OkStatus();
#endif
  if (!verifies() || crc == e.crc32) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      "'", path(), "': CRC-32 mismatch", key.empty() ? "" : " in key '", AbslView(key),
      key.empty() ? "" : "'", " (record '", archive_name_, "/", e.name, "', bytes [",
      e.data_offset, ", ", e.data_offset + e.size, ") of the file): the archive says ",
      absl::Hex(e.crc32, absl::kZeroPad8), ", the data has ", absl::Hex(crc, absl::kZeroPad8)));
}

absl::Status ZipReader::VerifyCrc(std::string_view name) const {
  FABRIC_ASSIGN_OR_RETURN(const Entry* e, Readable(name));
  constexpr size_t kChunk = size_t{16} << 20;
  std::string buf(static_cast<size_t>(std::min<uint64_t>(e->size, kChunk)), '\0');
  uint32_t crc = 0;
  for (uint64_t done = 0; done < e->size;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, e->size - done));
    FABRIC_RETURN_IF_ERROR(file_->ReadAt(e->data_offset + done, buf.data(), n));
    crc = Crc32(crc, buf.data(), n);
    done += n;
  }
  if (crc != e->crc32) return CrcMismatch(path(), name, e->crc32, crc);
  return absl::OkStatus();
}

}  // namespace fabric
