// The safetensors format (Hugging Face's weight files), header layer.
//
// A file is: 8 bytes, the header length N as a little-endian u64; N bytes of
// UTF-8 JSON (padded with spaces to a multiple of 8 by writers); then the data
// section, raw little-endian C-order tensor bytes. The JSON is one object:
//   {"__metadata__": {"format": "pt"},                      (optional, str -> str)
//    "fc.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...}
// with offsets relative to the data section. Nothing in it executes on load.
//
// What the reference implementation (the `safetensors` 0.8 crate behind the
// Python package) enforces, and so do we, with a message naming the file and
// the tensor: N at most 100,000,000 and within the file; the header is UTF-8
// JSON of an object; every dtype is known; shapes and offsets are unsigned
// integers; sorted by offset, each tensor starts where the previous one ended
// (the first at 0: no gaps, no overlap); its byte size is numel * itemsize;
// the last one ends exactly at the end of the file. We also refuse duplicate
// names (the reference keeps the last silently) and unknown fields beside
// dtype, shape and data_offsets are ignored as the reference ignores them.
#ifndef FABRIC_CHECKPOINT_SAFETENSORS_HEADER_H_
#define FABRIC_CHECKPOINT_SAFETENSORS_HEADER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"

namespace fabric {

// The reference's limit on N (a bigger header is refused before it is read).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// "F32" for kFloat, ...; nullopt for a dtype safetensors cannot name (e.g. a
// quantized type).
std::optional<std::string> SafetensorsDtypeName(at::ScalarType dtype);
// The LibTorch dtype of a safetensors dtype name. Errors: "unknown dtype" for
// a name the format does not define; Unimplemented for one it defines but
// LibTorch cannot hold (F4, F6_E2M3, F6_E3M2).
absl::StatusOr<at::ScalarType> SafetensorsDtypeFromName(std::string_view name);

// One tensor of a file.
struct SafetensorsTensorInfo {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // data_offsets, relative to the data section
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

struct SafetensorsHeader {
  // `__metadata__`; absent (nullopt) and empty ({}) are written differently.
  std::optional<std::map<std::string, std::string>> metadata;
  // In data order (increasing offsets).
  std::vector<SafetensorsTensorInfo> tensors;
  // Bytes of the data section the tensors cover.
  uint64_t data_bytes() const { return tensors.empty() ? 0 : tensors.back().end; }
};

// Parses and validates the JSON header of `file` (named in errors) whose data
// section holds `data_bytes` bytes.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view json,
                                                         uint64_t data_bytes,
                                                         const std::string& file);

// The header the safetensors package writes for these tensors: `tensors` are
// laid out (their begin/end assigned) in the package's order, by decreasing
// dtype alignment, then by name, so every tensor is aligned to its itemsize;
// the returned bytes are the 8-byte length and the compact JSON padded with
// spaces to a multiple of 8. Errors name the tensor: duplicate names, a dtype
// safetensors cannot name, a negative dimension, names that are not UTF-8, a
// header over kSafetensorsMaxHeaderBytes.
absl::StatusOr<std::string> LayOutSafetensors(SafetensorsHeader& header);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_SAFETENSORS_HEADER_H_
