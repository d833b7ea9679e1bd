#include "checkpoint/aligned_empty.h"

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace fabric {
namespace {

uintptr_t Address(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); }

// The THP mode line: "always [madvise] never" (the bracketed one is in force).
std::string ThpMode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

bool ThpEnabled() {
  const std::string mode = ThpMode();
  return !mode.empty() && mode.find("[never]") == std::string::npos;
}

// AnonHugePages (kB) of the mapping in /proc/self/smaps that holds `addr`.
int64_t HugeKbAt(uintptr_t addr) {
  std::ifstream f("/proc/self/smaps");
  std::string line;
  bool in = false;
  while (std::getline(f, line)) {
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      in = lo <= addr && addr < hi;
      continue;
    }
    if (in && line.rfind("AnonHugePages:", 0) == 0) return std::stoll(line.substr(14));
  }
  return -1;
}

TEST(AlignedEmptyTest, AlignmentBySize) {
  at::Tensor small = AlignedEmpty({1000}, at::kFloat);  // 4 KB: at::empty
  EXPECT_EQ(small.numel(), 1000);
  at::Tensor mid = AlignedEmpty({(1 << 20) / 4 + 3}, at::kFloat);  // just over 1 MiB
  EXPECT_EQ(Address(mid) % 4096, 0u);
  at::Tensor big = AlignedEmpty({1024, 1024 + 1, 5}, at::kByte);  // over 4 MiB, odd length
  EXPECT_EQ(Address(big) % (2u << 20), 0u);
  EXPECT_EQ(big.dtype(), at::kByte);
  EXPECT_EQ(big.sizes(), (at::IntArrayRef{1024, 1025, 5}));
}

TEST(AlignedEmptyTest, BigTensorsHoldEveryByteAndFree) {
  for (int round = 0; round < 4; ++round) {
    // 4 MiB + 12 bytes: the last page is partly the tensor's.
    at::Tensor t = AlignedEmpty({(int64_t{4} << 20) / 4 + 3}, at::kInt);
    t.copy_(at::arange(t.numel(), at::kInt));
    EXPECT_TRUE(t.equal(at::arange(t.numel(), at::kInt)));
    EXPECT_EQ(t[t.numel() - 1].item<int>(), t.numel() - 1);
  }
}

TEST(AlignedEmptyTest, BigTensorsGetHugePagesWhereThpIsOn) {
  if (!ThpEnabled()) GTEST_SKIP() << "transparent huge pages are off here";
  at::Tensor t = AlignedEmpty({int64_t{64} << 20}, at::kByte);
  t.fill_(7);  // first touch: faults the pages in
  EXPECT_GT(HugeKbAt(Address(t)), 0) << "no huge page backs a 64 MiB load buffer";
  EXPECT_EQ(t.sum().item<int64_t>(), int64_t{7} * (int64_t{64} << 20));
}

// Where THP is only on advice ("madvise"), SetHugePages(false) leaves big
// buffers in 4 KiB pages.
TEST(AlignedEmptyTest, HugePagesCanBeTurnedOff) {
  const std::string mode = ThpMode();
  if (mode.find("[madvise]") == std::string::npos) {
    GTEST_SKIP() << "THP is not in madvise mode here: " << mode;
  }
  ASSERT_TRUE(HugePagesEnabled());
  SetHugePages(false);
  at::Tensor t = AlignedEmpty({int64_t{64} << 20}, at::kByte);
  SetHugePages(true);
  t.fill_(3);
  EXPECT_EQ(Address(t) % (2u << 20), 0u);  // still aligned for O_DIRECT
  EXPECT_EQ(HugeKbAt(Address(t)), 0) << "a huge page backs a buffer allocated with them off";
  EXPECT_EQ(t.sum().item<int64_t>(), int64_t{3} * (int64_t{64} << 20));
}

}  // namespace
}  // namespace fabric
