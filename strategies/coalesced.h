// Helpers shared by the data-parallel strategies (DDP and FSDP).
#ifndef FABRIC_STRATEGIES_COALESCED_H_
#define FABRIC_STRATEGIES_COALESCED_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "strategies/process_group.h"

namespace fabric::strategies {

// FNV-1a of `text`: the same on every rank, unlike std::hash across builds
// (used to check that all ranks set up the same model).
int64_t Fingerprint(const std::string& text);

// Broadcasts `tensors` from rank 0 in place, coalesced per dtype into flat
// buffers of at most `cap` bytes (one collective per buffer, not per tensor).
absl::Status BroadcastCoalesced(DistributedContext& ctx, const std::vector<at::Tensor>& tensors,
                                int64_t cap);

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_COALESCED_H_
