#include "checkpoint/crc32.h"

#include <isa-l/crc.h>

#include <array>

namespace fabric {
namespace {

constexpr uint32_t kPoly = 0xedb88320u;  // reflected

// a * b modulo the CRC polynomial, bit 31 being x^0 (reflected order).
constexpr uint32_t MultModP(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return p;
}

// x^(2^k) modulo the polynomial, for k = 0..31.
constexpr std::array<uint32_t, 32> PowersOfX() {
  std::array<uint32_t, 32> t{};
  uint32_t p = 1u << 30;  // x^1
  t[0] = p;
  for (size_t k = 1; k < t.size(); ++k) t[k] = p = MultModP(p, p);
  return t;
}

constexpr std::array<uint32_t, 32> kX2n = PowersOfX();

// x^(n * 2^k) modulo the polynomial.
uint32_t X2nModP(uint64_t n, unsigned k) {
  uint32_t p = 1u << 31;  // x^0
  while (n) {
    if (n & 1) p = MultModP(kX2n[k & 31], p);
    n >>= 1;
    ++k;
  }
  return p;
}

}  // namespace

uint32_t Crc32(uint32_t crc, const void* data, size_t n) {
  if (n == 0) return crc;
  // crc32_gzip_refl does zlib's pre- and post-inversion itself.
  return crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), n);
}

uint32_t Crc32Combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  // Shifting a's CRC past len_b bytes (x^(8 len_b)), then adding b's.
  return MultModP(X2nModP(len_b, 3), crc_a) ^ crc_b;
}

}  // namespace fabric
