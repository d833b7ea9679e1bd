#include "strategies/ddp_strategy.h"

#include <utility>

#include "base/status_macros.h"

namespace fabric::strategies {

DdpStrategy::DdpStrategy(std::shared_ptr<DistributedContext> context, DdpOptions options)
    : context_(std::move(context)), options_(options) {}
DdpStrategy::~DdpStrategy() = default;

c10::Device DdpStrategy::device() const { return context_->device(); }
int DdpStrategy::global_rank() const { return context_->rank(); }
int DdpStrategy::world_size() const { return context_->world_size(); }

absl::Status DdpStrategy::SetupModule(const std::shared_ptr<torch::nn::Module>& module) {
  module->to(context_->device());
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<DistributedDataParallel> ddp,
                          DistributedDataParallel::Create(module, context_, options_));
  wrapped_.push_back(std::move(ddp));
  return absl::OkStatus();
}

absl::Status DdpStrategy::Backward(const at::Tensor& loss) {
  FABRIC_RETURN_IF_ERROR(Strategy::Backward(loss));
  for (auto& ddp : wrapped_) FABRIC_RETURN_IF_ERROR(ddp->FinishGradientSync());
  return absl::OkStatus();
}

absl::Status DdpStrategy::Barrier() { return context_->Barrier(); }

DistributedDataParallel* DdpStrategy::ddp(const torch::nn::Module& module) const {
  for (const auto& d : wrapped_) {
    if (&d->module() == &module) return d.get();
  }
  return nullptr;
}

}  // namespace fabric::strategies
