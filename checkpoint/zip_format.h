// Zip format constants (PKWARE APPNOTE.TXT) shared by ZipReader, ZipWriter
// and the checkpoint-kind detector: record signatures, fixed record sizes,
// the offsets of the fields we read, flags and extra-field ids.
#ifndef FABRIC_CHECKPOINT_ZIP_FORMAT_H_
#define FABRIC_CHECKPOINT_ZIP_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace fabric::zip_format {

// Signatures ("PK\3\4" etc. read as little-endian uint32).
inline constexpr uint32_t kLocalHeaderSig = 0x04034b50;
inline constexpr uint32_t kCentralHeaderSig = 0x02014b50;
inline constexpr uint32_t kDescriptorSig = 0x08074b50;
inline constexpr uint32_t kZip64EndSig = 0x06064b50;
inline constexpr uint32_t kZip64LocatorSig = 0x07064b50;
inline constexpr uint32_t kEndSig = 0x06054b50;
// The first four bytes of a zip file that starts with a record.
inline constexpr std::string_view kLocalHeaderMagic("PK\x03\x04", 4);

// Fixed sizes of the records (without names, extra fields and comments).
inline constexpr size_t kLocalHeaderSize = 30;
inline constexpr size_t kCentralHeaderSize = 46;
inline constexpr size_t kEndSize = 22;
inline constexpr size_t kZip64EndSize = 56;
inline constexpr size_t kZip64LocatorSize = 20;

// Field offsets in the local file header.
inline constexpr size_t kLocalFlagsAt = 6;
inline constexpr size_t kLocalMethodAt = 8;
inline constexpr size_t kLocalCrcAt = 14;
inline constexpr size_t kLocalSizeAt = 22;
inline constexpr size_t kLocalNameLenAt = 26;
inline constexpr size_t kLocalExtraLenAt = 28;

// Field offsets in the central directory header.
inline constexpr size_t kCentralFlagsAt = 8;
inline constexpr size_t kCentralMethodAt = 10;
inline constexpr size_t kCentralCrcAt = 16;
inline constexpr size_t kCentralCompressedSizeAt = 20;
inline constexpr size_t kCentralSizeAt = 24;
inline constexpr size_t kCentralNameLenAt = 28;
inline constexpr size_t kCentralExtraLenAt = 30;
inline constexpr size_t kCentralCommentLenAt = 32;
inline constexpr size_t kCentralHeaderOffsetAt = 42;

// Field offsets in the end of central directory record.
inline constexpr size_t kEndDiskAt = 4;
inline constexpr size_t kEndCdDiskAt = 6;
inline constexpr size_t kEndDiskCountAt = 8;
inline constexpr size_t kEndCountAt = 10;
inline constexpr size_t kEndCdSizeAt = 12;
inline constexpr size_t kEndCdOffsetAt = 16;
inline constexpr size_t kEndCommentLenAt = 20;

// Field offsets in the zip64 end record and its locator.
inline constexpr size_t kZip64LocatorEndOffsetAt = 8;
inline constexpr size_t kZip64EndCountAt = 32;
inline constexpr size_t kZip64EndCdSizeAt = 40;
inline constexpr size_t kZip64EndCdOffsetAt = 48;

// A classic 16- or 32-bit field holding this defers to the zip64 records.
inline constexpr uint64_t kMax16 = 0xffff;
inline constexpr uint64_t kMax32 = 0xffffffff;

// "Version needed to extract" and "made by".
inline constexpr uint16_t kVersionDefault = 20;  // 2.0
inline constexpr uint16_t kVersionZip64 = 45;    // 4.5
inline constexpr uint16_t kMadeByUnix = 3 << 8;

// General-purpose bit flags.
inline constexpr uint16_t kFlagEncrypted = 1 << 0;
inline constexpr uint16_t kFlagDescriptor = 1 << 3;
inline constexpr uint16_t kFlagUtf8 = 1 << 11;

// Extra-field ids.
inline constexpr uint16_t kZip64ExtraId = 0x0001;
inline constexpr uint16_t kPaddingExtraId = 0x4246;  // "FB", PyTorch's alignment padding

}  // namespace fabric::zip_format

#endif  // FABRIC_CHECKPOINT_ZIP_FORMAT_H_
