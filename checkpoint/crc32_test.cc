#include "checkpoint/crc32.h"

#include <zlib.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace fabric {
namespace {

uint32_t Crc(const std::string& s) { return Crc32(0, s.data(), s.size()); }

TEST(Crc32Test, KnownVectors) {
  EXPECT_EQ(Crc(""), 0u);
  EXPECT_EQ(Crc("a"), 0xE8B7BE43u);
  EXPECT_EQ(Crc("abc"), 0x352441C2u);
  EXPECT_EQ(Crc("123456789"), 0xCBF43926u);
  EXPECT_EQ(Crc("The quick brown fox jumps over the lazy dog"), 0x414FA339u);
  EXPECT_EQ(Crc(std::string(32, '\0')), 0x190A55ADu);
  EXPECT_EQ(Crc(std::string(32, '\xff')), 0xFF6CAB0Bu);
}

TEST(Crc32Test, EmptyInputKeepsCrc) {
  EXPECT_EQ(Crc32(0x12345678u, nullptr, 0), 0x12345678u);
}

TEST(Crc32Test, MatchesZlibOnRandomData) {
  std::mt19937_64 rng(42);
  std::vector<unsigned char> buf(3 << 20);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  // Many lengths and misalignments, to cover the vector code's head and tail.
  for (size_t len : {1, 3, 15, 16, 17, 63, 64, 65, 255, 256, 1000, 4096, 65537, 1 << 20, 3 << 20}) {
    for (size_t off : {0, 1, 7}) {
      if (off + len > buf.size()) continue;
      const uint32_t want = static_cast<uint32_t>(
          crc32(0L, buf.data() + off, static_cast<uInt>(len)));
      EXPECT_EQ(Crc32(0, buf.data() + off, len), want) << "len " << len << " off " << off;
    }
  }
}

TEST(Crc32Test, IncrementalEqualsOneShot) {
  std::mt19937_64 rng(7);
  std::vector<unsigned char> buf(1 << 20);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  const uint32_t one_shot = Crc32(0, buf.data(), buf.size());
  std::uniform_int_distribution<size_t> piece(0, 70000);
  uint32_t crc = 0;
  for (size_t done = 0; done < buf.size();) {
    const size_t n = std::min(piece(rng), buf.size() - done);
    crc = Crc32(crc, buf.data() + done, n);
    done += n;
  }
  EXPECT_EQ(crc, one_shot);
  // zlib continues the same way.
  EXPECT_EQ(static_cast<uint32_t>(crc32(crc32(0L, buf.data(), 1000), buf.data() + 1000,
                                        static_cast<uInt>(buf.size() - 1000))),
            one_shot);
}

TEST(Crc32Test, CombineEqualsOneShotAndZlib) {
  std::mt19937_64 rng(11);
  std::vector<unsigned char> buf(1 << 20);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  const uint32_t whole = Crc32(0, buf.data(), buf.size());
  for (size_t split : {size_t{0}, size_t{1}, size_t{4095}, size_t{1} << 19, buf.size() - 1,
                       buf.size()}) {
    const uint32_t a = Crc32(0, buf.data(), split);
    const uint32_t b = Crc32(0, buf.data() + split, buf.size() - split);
    EXPECT_EQ(Crc32Combine(a, b, buf.size() - split), whole) << "split " << split;
    EXPECT_EQ(Crc32Combine(a, b, buf.size() - split),
              static_cast<uint32_t>(crc32_combine(a, b, static_cast<z_off_t>(buf.size() - split))));
  }
  // Three pieces, combined left to right.
  const uint32_t c = Crc32Combine(Crc32Combine(Crc32(0, buf.data(), 100),
                                               Crc32(0, buf.data() + 100, 900), 900),
                                  Crc32(0, buf.data() + 1000, buf.size() - 1000),
                                  buf.size() - 1000);
  EXPECT_EQ(c, whole);
}

}  // namespace
}  // namespace fabric
