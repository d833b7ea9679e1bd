#include "strategies/coalesced.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "base/status_macros.h"

namespace fabric::strategies {

int64_t Fingerprint(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return static_cast<int64_t>(h >> 1);
}

absl::Status BroadcastCoalesced(DistributedContext& ctx, const std::vector<at::Tensor>& tensors,
                                int64_t cap) {
  at::NoGradGuard no_grad;
  size_t i = 0;
  while (i < tensors.size()) {
    std::vector<at::Tensor> group = {tensors[i]};
    int64_t bytes = tensors[i].numel() * tensors[i].element_size();
    size_t j = i + 1;
    while (j < tensors.size() && tensors[j].scalar_type() == tensors[i].scalar_type() &&
           bytes + tensors[j].numel() * tensors[j].element_size() <= cap) {
      bytes += tensors[j].numel() * tensors[j].element_size();
      group.push_back(tensors[j++]);
    }
    std::vector<at::Tensor> flat_parts;
    for (const at::Tensor& t : group) flat_parts.push_back(t.detach().reshape({-1}));
    at::Tensor flat = at::cat(flat_parts);
    FABRIC_RETURN_IF_ERROR(ctx.Broadcast(flat, 0));
    int64_t offset = 0;
    for (const at::Tensor& t : group) {
      t.detach().copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
    i = j;
  }
  return absl::OkStatus();
}

}  // namespace fabric::strategies
