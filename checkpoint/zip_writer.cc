#include "checkpoint/zip_writer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/absl_view.h"
#include "base/status_macros.h"
#include "checkpoint/crc32.h"
#include "checkpoint/little_endian.h"
#include "checkpoint/zip_format.h"

namespace fabric {
namespace {

using zip_format::kMax16;
using zip_format::kMax32;

constexpr uint64_t kAlignment = 64;
// Records this big start at a multiple of 4 KiB instead (PyTorch's readers
// only need 64): with the archive at a 4 KiB offset of its file, a load can
// read them with O_DIRECT straight into page-aligned tensors. At most 4 KiB
// of padding per such record.
constexpr uint64_t kBigRecord = uint64_t{1} << 20;
constexpr uint64_t kBigAlignment = 4096;

// Little-endian field appender.
class Bytes {
 public:
  explicit Bytes(std::string* out) : out_(out) {}
  Bytes& U16(uint16_t v) { return Le(v, 2); }
  Bytes& U32(uint32_t v) { return Le(v, 4); }
  Bytes& U64(uint64_t v) { return Le(v, 8); }
  Bytes& Str(std::string_view s) {
    out_->append(s.data(), s.size());
    return *this;
  }

 private:
  Bytes& Le(uint64_t v, size_t n) {
    little_endian::Append(out_, v, n);
    return *this;
  }
  std::string* out_;
};

uint16_t Sat16(uint64_t v) { return static_cast<uint16_t>(std::min<uint64_t>(v, kMax16)); }
uint32_t Sat32(uint64_t v) { return static_cast<uint32_t>(std::min<uint64_t>(v, kMax32)); }

}  // namespace

ZipWriter::ZipWriter(ByteSink* sink, std::string archive_name)
    : ZipWriter(sink, std::move(archive_name), Options()) {}

ZipWriter::ZipWriter(ByteSink* sink, std::string archive_name, Options options)
    : sink_(sink),
      archive_name_(std::move(archive_name)),
      options_(options),
      start_(sink->position()) {
  if (archive_name_.empty() || archive_name_.find('/') != std::string::npos) {
    error_ = absl::InvalidArgumentError(
        absl::StrCat("zip archive name '", archive_name_, "' must be non-empty without '/'"));
  }
}

uint64_t ZipWriter::bytes_written() const { return sink_->position() - start_; }

absl::Status ZipWriter::CheckUsable(std::string_view what) const {
  FABRIC_RETURN_IF_ERROR(error_);
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("zip archive '", archive_name_, "': ", AbslView(what), " after Finish()"));
  }
  return absl::OkStatus();
}

absl::Status ZipWriter::Put(const void* data, size_t n) {
  if (n == 0) return absl::OkStatus();
  absl::Status s = sink_->Write(data, n);
  if (!s.ok() && error_.ok()) error_ = s;
  return s;
}

absl::Status ZipWriter::StartRecord(std::string_view name, uint64_t size, uint32_t crc,
                                    bool descriptor) {
  FABRIC_RETURN_IF_ERROR(CheckUsable("adding a record"));
  if (open_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "zip archive '", archive_name_, "': record '", AbslView(name), "' started before '",
        records_.empty() ? "" : records_.back().name, "' was ended"));
  }
  std::string full = absl::StrCat(archive_name_, "/", AbslView(name));
  if (name.empty() || full.size() > kMax16) {
    return absl::InvalidArgumentError(
        absl::StrCat("zip archive '", archive_name_, "': bad record name '", AbslView(name), "'"));
  }
  if (!names_.insert(full).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("zip archive '", archive_name_, "': duplicate record '", AbslView(name), "'"));
  }
  const uint64_t offset = bytes_written();
  // The local header needs zip64 sizes only for a big record; its own offset
  // lives in the central directory.
  const bool zip64 = options_.force_zip64 || size >= kMax32;
  const uint16_t flags = zip_format::kFlagUtf8 | (descriptor ? zip_format::kFlagDescriptor : 0);
  const size_t zip64_extra = zip64 ? 20 : 0;
  // Pad with an "FB" extra field so that the data starts 64-aligned (4 KiB
  // for big records).
  const uint64_t unpadded = offset + zip_format::kLocalHeaderSize + full.size() + zip64_extra + 4;
  const uint64_t align = size >= kBigRecord ? kBigAlignment : kAlignment;
  const size_t pad = static_cast<size_t>((align - unpadded % align) % align);
  const uint64_t known = descriptor ? 0 : size;

  std::string h;
  h.reserve(zip_format::kLocalHeaderSize + full.size() + zip64_extra + 4 + pad);
  Bytes(&h)
      .U32(zip_format::kLocalHeaderSig)
      .U16(zip64 ? zip_format::kVersionZip64 : zip_format::kVersionDefault)
      .U16(flags)
      .U16(0)  // STORED
      .U16(0)  // time
      .U16(0)  // date (like PyTorch: no timestamps, reproducible files)
      .U32(descriptor ? 0 : crc)
      .U32(zip64 ? kMax32 : static_cast<uint32_t>(known))
      .U32(zip64 ? kMax32 : static_cast<uint32_t>(known))
      .U16(static_cast<uint16_t>(full.size()))
      .U16(static_cast<uint16_t>(zip64_extra + 4 + pad))
      .Str(full);
  if (zip64) Bytes(&h).U16(zip_format::kZip64ExtraId).U16(16).U64(known).U64(known);
  Bytes(&h).U16(zip_format::kPaddingExtraId).U16(static_cast<uint16_t>(pad));
  h.append(pad, 'Z');
  FABRIC_RETURN_IF_ERROR(Put(h.data(), h.size()));

  records_.push_back(Record{std::move(full), offset, size, crc, flags});
  open_zip64_ = zip64;
  return absl::OkStatus();
}

namespace {
constexpr size_t kStreamedRecordMin = size_t{4} << 20;
constexpr size_t kStreamedPiece = size_t{512} << 10;
}  // namespace

absl::Status ZipWriter::WriteRecord(std::string_view name, const void* data, size_t n) {
  if (n >= kStreamedRecordMin) {
    // Large records go through in cache-sized pieces, each checksummed right
    // before it is copied out, so the bytes are read from memory once rather
    // than twice; the CRC then follows in a data descriptor, as PyTorch's
    // writer does for every record.
    FABRIC_RETURN_IF_ERROR(BeginRecord(name, n));
    const char* p = static_cast<const char*>(data);
    for (size_t done = 0; done < n;) {
      const size_t piece = std::min(kStreamedPiece, n - done);
      FABRIC_RETURN_IF_ERROR(AppendRecordData(p + done, piece));
      done += piece;
    }
    return EndRecord();
  }
  const uint32_t crc = Crc32(0, data, n);
  FABRIC_RETURN_IF_ERROR(StartRecord(name, n, crc, /*descriptor=*/false));
  return Put(data, n);
}

absl::Status ZipWriter::BeginRecord(std::string_view name, uint64_t n) {
  FABRIC_RETURN_IF_ERROR(StartRecord(name, n, 0, /*descriptor=*/true));
  open_ = true;
  open_done_ = 0;
  open_crc_ = 0;
  return absl::OkStatus();
}

absl::Status ZipWriter::AppendRecordData(const void* data, size_t n) {
  FABRIC_RETURN_IF_ERROR(CheckUsable("appending record data"));
  if (!open_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "zip archive '", archive_name_, "': AppendRecordData without BeginRecord"));
  }
  Record& r = records_.back();
  if (n > r.size - open_done_) {
    return absl::InvalidArgumentError(
        absl::StrCat("zip archive '", archive_name_, "': record '", r.name, "' was declared ",
                     r.size, " bytes but ", open_done_ + n, " were appended"));
  }
  open_crc_ = Crc32(open_crc_, data, n);
  open_done_ += n;
  return Put(data, n);
}

absl::Status ZipWriter::EndRecord() {
  FABRIC_RETURN_IF_ERROR(CheckUsable("ending a record"));
  if (!open_) {
    return absl::FailedPreconditionError(
        absl::StrCat("zip archive '", archive_name_, "': EndRecord without BeginRecord"));
  }
  Record& r = records_.back();
  if (open_done_ != r.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("zip archive '", archive_name_, "': record '", r.name, "' was declared ",
                     r.size, " bytes but only ", open_done_, " were appended"));
  }
  open_ = false;
  r.crc = open_crc_;
  std::string d;
  Bytes b(&d);
  b.U32(zip_format::kDescriptorSig).U32(r.crc);
  if (open_zip64_) {
    b.U64(r.size).U64(r.size);
  } else {
    b.U32(static_cast<uint32_t>(r.size)).U32(static_cast<uint32_t>(r.size));
  }
  return Put(d.data(), d.size());
}

absl::Status ZipWriter::Finish() {
  FABRIC_RETURN_IF_ERROR(CheckUsable("Finish()"));
  if (open_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "zip archive '", archive_name_, "': Finish() while record '", records_.back().name,
        "' is still open"));
  }
  finished_ = true;
  const bool force = options_.force_zip64;
  const uint64_t cd_offset = bytes_written();
  std::string buf;
  for (const Record& r : records_) {
    const bool big = force || r.size >= kMax32;
    const bool far = force || r.offset >= kMax32;
    const uint16_t extra = static_cast<uint16_t>((big || far) ? 4 + (big ? 16 : 0) + (far ? 8 : 0)
                                                              : 0);
    Bytes b(&buf);
    b.U32(zip_format::kCentralHeaderSig)
        .U16(zip_format::kMadeByUnix | zip_format::kVersionZip64)
        .U16((big || far) ? zip_format::kVersionZip64 : zip_format::kVersionDefault)
        .U16(r.flags)
        .U16(0)  // STORED
        .U16(0)
        .U16(0)
        .U32(r.crc)
        .U32(big ? kMax32 : static_cast<uint32_t>(r.size))
        .U32(big ? kMax32 : static_cast<uint32_t>(r.size))
        .U16(static_cast<uint16_t>(r.name.size()))
        .U16(extra)
        .U16(0)                  // comment
        .U16(0)                  // disk
        .U16(0)                  // internal attributes
        .U32(0100644u << 16)     // external attributes: a regular file, rw-r--r--
        .U32(far ? kMax32 : static_cast<uint32_t>(r.offset))
        .Str(r.name);
    if (extra > 0) {
      b.U16(zip_format::kZip64ExtraId).U16(static_cast<uint16_t>(extra - 4));
      if (big) b.U64(r.size).U64(r.size);
      if (far) b.U64(r.offset);
    }
    if (buf.size() >= (1 << 20)) {
      FABRIC_RETURN_IF_ERROR(Put(buf.data(), buf.size()));
      buf.clear();
    }
  }
  FABRIC_RETURN_IF_ERROR(Put(buf.data(), buf.size()));
  buf.clear();
  const uint64_t cd_size = bytes_written() - cd_offset;
  const uint64_t count = records_.size();
  const uint64_t zip64_end = bytes_written();
  Bytes(&buf)
      // zip64 end of central directory record
      .U32(zip_format::kZip64EndSig)
      .U64(zip_format::kZip64EndSize - 12)
      .U16(zip_format::kMadeByUnix | zip_format::kVersionZip64)
      .U16(zip_format::kVersionZip64)
      .U32(0)
      .U32(0)
      .U64(count)
      .U64(count)
      .U64(cd_size)
      .U64(cd_offset)
      // zip64 end of central directory locator
      .U32(zip_format::kZip64LocatorSig)
      .U32(0)
      .U64(zip64_end)
      .U32(1)
      // end of central directory record
      .U32(zip_format::kEndSig)
      .U16(0)
      .U16(0)
      .U16(force ? kMax16 : Sat16(count))
      .U16(force ? kMax16 : Sat16(count))
      .U32(force ? kMax32 : Sat32(cd_size))
      .U32(force ? kMax32 : Sat32(cd_offset))
      .U16(0);
  return Put(buf.data(), buf.size());
}

}  // namespace fabric
