#include "checkpoint/aligned_empty.h"

#include <sys/mman.h>

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "base/env_switch.h"

namespace fabric {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kAlignedMin = size_t{1} << 20;
constexpr size_t kHugeMin = size_t{4} << 20;

std::atomic<bool> g_huge_pages{EnvSwitchOn("FABRIC_HUGE_PAGES")};

void FreeAligned(void* p) { std::free(p); }

class PageAlignedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    void* p = nullptr;
    if (n > 0) {
      TORCH_CHECK_WITH(OutOfMemoryError, posix_memalign(&p, kPage, n) == 0,
                       "cannot allocate ", n, " bytes for a tensor to load into");
    }
    return {p, p, &FreeAligned, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &FreeAligned; }
  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// One mapping per tensor; the context remembers its length for munmap.
struct Mapping {
  void* base;
  size_t length;
};

void Unmap(void* ctx) {
  auto* m = static_cast<Mapping*>(ctx);
  munmap(m->base, m->length);
  delete m;
}

class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t length = (n + kPage - 1) / kPage * kPage;
    // Over-map by one huge page, then trim both ends so the mapping starts
    // on a 2 MiB boundary and holds no more than the tensor's pages.
    void* raw = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK_WITH(OutOfMemoryError, raw != MAP_FAILED, "cannot map ", n,
                     " bytes for a tensor to load into");
    const auto start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (start + kHugePage - 1) & ~uintptr_t{kHugePage - 1};
    if (aligned > start) munmap(raw, aligned - start);
    const uintptr_t end = start + length + kHugePage;
    if (end > aligned + length) munmap(reinterpret_cast<void*>(aligned + length), end - aligned - length);
    void* p = reinterpret_cast<void*>(aligned);
    // Advice only: fails harmlessly without THP.
    if (HugePagesEnabled()) madvise(p, length, MADV_HUGEPAGE);
    return {p, new Mapping{p, length}, &Unmap, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

}  // namespace

void SetHugePages(bool on) { g_huge_pages.store(on); }
bool HugePagesEnabled() { return g_huge_pages.load(); }

at::Tensor AlignedEmpty(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (nbytes < kAlignedMin) {
    return at::empty(sizes, at::TensorOptions().dtype(dtype));
  }
  static PageAlignedAllocator page_aligned;
  static HugePageAllocator huge;
  c10::Allocator* allocator = nbytes >= kHugeMin ? static_cast<c10::Allocator*>(&huge)
                                                 : static_cast<c10::Allocator*>(&page_aligned);
  return at::detail::empty_generic(sizes, allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   dtype, std::nullopt);
}

}  // namespace fabric
