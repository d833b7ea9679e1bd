#include "checkpoint/staging.h"

#include <optional>
#include <utility>

#include <ATen/ATen.h>
#ifdef FABRIC_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "absl/strings/str_cat.h"

namespace fabric {

#ifdef FABRIC_WITH_CUDA
struct StagingBuffers::Device {
  std::optional<c10::cuda::CUDAStream> side;     // the copies' stream
  std::optional<c10::cuda::CUDAStream> compute;  // the stream the state was made on
  std::optional<at::cuda::CUDAEvent> done;       // after the last copy
  bool used = false;                             // this snapshot copied from the GPU
};
#else
struct StagingBuffers::Device {};
#endif

StagingBuffers::StagingBuffers() : device_(std::make_unique<Device>()) {}
StagingBuffers::~StagingBuffers() = default;

void StagingBuffers::BeginStaging() {
  next_ = 0;
  staged_bytes_ = 0;
  allocated_bytes_ = 0;
#ifdef FABRIC_WITH_CUDA
  device_->used = false;
#endif
}

at::Tensor StagingBuffers::Stage(const at::Tensor& live) {
  at::Tensor t = live.detach();
  const bool from_gpu = t.is_cuda();
  at::Tensor* slot = nullptr;
  if (next_ < buffers_.size()) {
    at::Tensor& b = buffers_[next_];
    if (b.defined() && b.scalar_type() == t.scalar_type() && b.sizes() == t.sizes() &&
        (!from_gpu || b.is_pinned())) {
      slot = &b;
    }
  } else {
    buffers_.resize(next_ + 1);
  }
  if (slot == nullptr) {
    at::Tensor fresh = at::empty(t.sizes(), at::TensorOptions()
                                                 .dtype(t.scalar_type())
                                                 .device(c10::kCPU)
                                                 .pinned_memory(from_gpu));
    fresh.zero_();  // maps every page now, not during the next save's copy
    allocated_bytes_ += static_cast<int64_t>(fresh.nbytes());
    buffers_[next_] = std::move(fresh);
    slot = &buffers_[next_];
  }
  ++next_;
  staged_bytes_ += static_cast<int64_t>(slot->nbytes());
#ifdef FABRIC_WITH_CUDA
  if (from_gpu) {
    Device& d = *device_;
    const c10::DeviceIndex index = t.device().index();
    if (!d.used) {
      d.compute = c10::cuda::getCurrentCUDAStream(index);
      if (!d.side || d.side->device_index() != index) {
        d.side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
      }
      // The copies start after everything queued so far (the step that
      // produced this state).
      at::cuda::CUDAEvent ready;
      ready.record(*d.compute);
      ready.block(*d.side);
      d.used = true;
    }
    // The source's memory must not be reused while the side stream reads it.
    c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), *d.side);
    c10::cuda::CUDAStreamGuard guard(*d.side);
    slot->copy_(t, /*non_blocking=*/true);
    return *slot;
  }
#endif
  slot->copy_(t);
  return *slot;
}

Value StagingBuffers::StageValue(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kTensor:
      return Value(Stage(v.as_tensor()));
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      std::vector<Value> items;
      items.reserve(v.items().size());
      for (const Value& item : v.items()) items.push_back(StageValue(item));
      return v.is_list() ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
    }
    case Value::Kind::kDict: {
      Dict d;
      for (const auto& [k, item] : v.as_dict()) d.Set(k, StageValue(item));
      return Value(std::move(d));
    }
    default:
      return v.Clone();
  }
}

void StagingBuffers::EndStaging() {
  buffers_.resize(next_);  // what the state no longer has
#ifdef FABRIC_WITH_CUDA
  Device& d = *device_;
  if (d.used) {
    d.done.emplace();
    d.done->record(*d.side);
    // The next kernel on the compute stream (the optimizer step) waits for
    // the copies; the host goes on at once.
    d.done->block(*d.compute);
  }
#endif
}

absl::Status StagingBuffers::WaitReady() {
#ifdef FABRIC_WITH_CUDA
  Device& d = *device_;
  if (d.used && d.done) {
    try {
      d.done->synchronize();
    } catch (const std::exception& e) {
      return absl::InternalError(
          absl::StrCat("staging a checkpoint: the device-to-host copies failed: ", e.what()));
    }
  }
#endif
  return absl::OkStatus();
}

int64_t StagingBuffers::held_bytes() const {
  int64_t n = 0;
  for (const at::Tensor& b : buffers_) {
    if (b.defined()) n += static_cast<int64_t>(b.nbytes());
  }
  return n;
}

at::Tensor StageOrPass(StagingBuffers* buffers, const at::Tensor& t) {
  return buffers != nullptr ? buffers->Stage(t) : t.detach();
}

Value StageOrPass(StagingBuffers* buffers, const Value& v) {
  return buffers != nullptr ? buffers->StageValue(v) : v;
}

}  // namespace fabric
