#include "checkpoint/aligned_empty.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>

namespace fabric {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kAlignedMin = size_t{1} << 20;

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

}  // namespace

at::Tensor AlignedEmpty(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  if (static_cast<size_t>(numel) * c10::elementSize(dtype) < kAlignedMin) {
    return at::empty(sizes, at::TensorOptions().dtype(dtype));
  }
  static PageAlignedAllocator allocator;
  return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   dtype, std::nullopt);
}

}  // namespace fabric
