#include "checkpoint/staging.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#ifdef FABRIC_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

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

void StagingBuffers::BeginStaging(int64_t max_new_bytes) {
  next_ = 0;
  staged_bytes_ = 0;
  allocated_bytes_ = 0;
  max_new_bytes_ = max_new_bytes;
  refused_bytes_ = 0;
  copy_seconds_ = 0;
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
  if (slot == nullptr && (refused_bytes_ > 0 ||
                          allocated_bytes_ + static_cast<int64_t>(t.nbytes()) > max_new_bytes_)) {
    // Over budget: count what it would need, allocate nothing more. The
    // snapshot is void (EndStaging fails), so the live tensor is returned.
    refused_bytes_ += static_cast<int64_t>(t.nbytes());
    ++next_;
    return t;
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
  const auto start = std::chrono::steady_clock::now();
  struct AddTime {
    double* to;
    std::chrono::steady_clock::time_point start;
    ~AddTime() {
      *to += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
  } add_time{&copy_seconds_, start};
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

absl::Status StagingBuffers::EndStaging() {
  if (refused_bytes_ > 0) {
    const int64_t needed = allocated_bytes_ + refused_bytes_;
    buffers_.clear();
    return absl::ResourceExhaustedError(absl::StrCat(
        "staging this rank's state for an asynchronous save needs ", needed, " bytes (",
        absl::StrFormat("%.2f GiB", static_cast<double>(needed) / (1 << 30)),
        ") of new host buffers, more than the ", max_new_bytes_,
        " this process may take (FabricOptions::max_staging_bytes, by default its share of "
        "MemAvailable): save synchronously (Save), "
        "shard the state over more ranks, or free host memory"));
  }
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
  return absl::OkStatus();
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

int64_t StagingBudget(int processes_on_host) {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = -1;
  std::string unit;
  while (in >> key) {
    if (key == "MemAvailable:") {
      in >> kib;
      break;
    }
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  if (kib < 0) return INT64_MAX;
  // 90% of an equal share: the page cache the writes fill, and the
  // training's own growth, need the rest.
  return static_cast<int64_t>(static_cast<double>(kib) * 1024 * 0.9 /
                              std::max(1, processes_on_host));
}

at::Tensor StageOrPass(StagingBuffers* buffers, const at::Tensor& t) {
  return buffers != nullptr ? buffers->Stage(t) : t.detach();
}

Value StageOrPass(StagingBuffers* buffers, const Value& v) {
  return buffers != nullptr ? buffers->StageValue(v) : v;
}

}  // namespace fabric
