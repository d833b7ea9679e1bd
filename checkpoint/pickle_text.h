// Text arguments of the pickle reader's protocol-0 opcodes (STRING, UNICODE)
// and the Latin-1 form of bytes that protocol 2 pickles as text. Errors say
// what is wrong; the reader adds where.
#ifndef FABRIC_CHECKPOINT_PICKLE_TEXT_H_
#define FABRIC_CHECKPOINT_PICKLE_TEXT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fabric::pickle {

// Appends code point `cp` as UTF-8.
void AppendUtf8(uint32_t cp, std::string* out);

// UTF-8 -> Latin-1 bytes (as Python's str.encode('latin1')); nullopt if a
// code point is above 0xff or the UTF-8 is malformed.
std::optional<std::string> Utf8ToLatin1(std::string_view s);

// STRING's argument: a quoted Python 2 str literal, with its escapes.
absl::StatusOr<std::string> DecodePythonStringLiteral(std::string_view line);

// UNICODE's argument: raw-unicode-escape (Latin-1 plus \uXXXX, \UXXXXXXXX),
// returned as UTF-8.
absl::StatusOr<std::string> DecodeRawUnicodeEscape(std::string_view line);

}  // namespace fabric::pickle

#endif  // FABRIC_CHECKPOINT_PICKLE_TEXT_H_
