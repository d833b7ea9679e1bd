// Little-endian integer fields, as the zip and pickle formats store them.
// Byte-by-byte, so they work at any alignment and on any host.
#ifndef FABRIC_CHECKPOINT_LITTLE_ENDIAN_H_
#define FABRIC_CHECKPOINT_LITTLE_ENDIAN_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace fabric::little_endian {

// The n-byte (n <= 8) unsigned value at p.
inline uint64_t Load(const char* p, size_t n) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  uint64_t v = 0;
  for (size_t i = n; i > 0; --i) v = (v << 8) | b[i - 1];
  return v;
}
inline uint16_t Load16(const char* p) { return static_cast<uint16_t>(Load(p, 2)); }
inline uint32_t Load32(const char* p) { return static_cast<uint32_t>(Load(p, 4)); }
inline uint64_t Load64(const char* p) { return Load(p, 8); }

// Appends the low n bytes (n <= 8) of v.
inline void Append(std::string* out, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace fabric::little_endian

#endif  // FABRIC_CHECKPOINT_LITTLE_ENDIAN_H_
