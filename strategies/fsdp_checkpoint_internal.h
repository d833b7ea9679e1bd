// Internal to the FSDP checkpoint files (fsdp_sharded_checkpoint,
// fsdp_full_checkpoint, fsdp_optimizer_state): how a State's entries map to
// FSDP wrappers and optimizer parameters, and the load plumbing they share.
#ifndef FABRIC_STRATEGIES_FSDP_CHECKPOINT_INTERNAL_H_
#define FABRIC_STRATEGIES_FSDP_CHECKPOINT_INTERNAL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/load_report.h"
#include "checkpoint/state.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "strategies/fsdp.h"
#include "strategies/fsdp_checkpoint_options.h"
#include "strategies/process_group.h"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace fabric::strategies::fsdp_internal {

// One entry of the State, resolved: a sharded model (its FSDP wrapper found),
// a plain model, an optimizer or a value. Points into the State.
struct Entry {
  enum class Kind { kShardedModel, kModel, kOptimizer, kValue };
  std::string key;
  Kind kind = Kind::kValue;
  FullyShardedDataParallel* fsdp = nullptr;
  torch::nn::Module* module = nullptr;
  torch::optim::Optimizer* optimizer = nullptr;
  const Value* value = nullptr;
};
using Kind = Entry::Kind;

std::vector<Entry> ResolveEntries(const State& state, const FsdpWrapperOf& wrapper_of);

int RankOf(const DistributedContext* ctx);
int WorldOf(const DistributedContext* ctx);
// ShareStatus / AgreeOnStatus / AllGatherBytes of `ctx`; a null `ctx` is a
// single process.
absl::Status ShareStatus(DistributedContext* ctx, const absl::Status& mine);
absl::Status AgreeOnStatus(DistributedContext* ctx, const absl::Status& mine);
absl::StatusOr<std::vector<std::string>> AllGatherBytes(DistributedContext* ctx,
                                                        const std::string& mine);

// The tensor an optimizer holds, and which model parameter it is.
struct ParamRef {
  std::string fqn;
  FullyShardedDataParallel* fsdp = nullptr;  // null: a plain model's parameter
  int index = -1;                             // into fsdp->params()
  at::Tensor tensor;
  int group = 0;
};

const FsdpParamInfo* InfoOf(const ParamRef& ref);

// The optimizer's parameters in Python's numbering (across groups, in order).
absl::StatusOr<std::vector<ParamRef>> OptimizerParams(const torch::optim::Optimizer& opt,
                                                      const std::vector<Entry>& entries,
                                                      const std::string& key);

// Whether an optimizer state tensor named `name` of parameter `info` is
// sharded like its parameter (the same decision on every rank).
bool IsShardedState(const FsdpParamInfo& info, const std::string& name, const at::Tensor& t);

// Whether the filter keeps item `name` (holding `value`) of entry `key`.
bool Keep(const FsdpCheckpointOptions& options, const std::string& key, const std::string& name,
          const Value& value);

// A fqn -> index map of a sharded model's parameters (empty for null).
std::unordered_map<std::string, int> ParamIndex(const FullyShardedDataParallel* fsdp);

// The optimizer's param_groups with 'params' as parameter FQNs (as
// FSDP.optim_state_dict writes them).
Value GroupsWithNames(const Dict& osd, const std::vector<ParamRef>& refs);

// The checkpoint's param_groups (with parameter FQNs or ints) as our
// optimizer's (with our indices); errors name `what`.
absl::StatusOr<Value> MapGroups(const Value& groups, const std::vector<ParamRef>& refs,
                                const torch::optim::Optimizer& opt, const std::string& what);

// Non-model, non-optimizer entries, filtered: what Lightning puts in meta.pt.
Dict MetaDict(const std::vector<Entry>& entries, const FsdpCheckpointOptions& options);

// A contiguous CPU TensorRef of `sizes` under storage `key`.
TensorRef RefFor(const std::string& key, at::ScalarType dtype, const std::vector<int64_t>& sizes);

// ---------------------------------------------------------------------------
// Loading: every check first, then every read.

// One copy to do once everything has been checked.
using PendingRead = std::function<absl::Status()>;

struct LoadPlan {
  StateLoadReport report;
  std::vector<PendingRead> reads;
  std::vector<std::function<absl::Status()>> finish;  // after the reads (optimizers)
};

// Runs read(0..n-1) a few at a time, with grad mode off.
absl::Status RunReads(size_t n, const std::function<absl::Status(size_t)>& read);

// After the reads, a sharded model drops full parameters that are now stale;
// they are gathered again on use.
void ReshardAfterLoad(LoadPlan& plan, FullyShardedDataParallel* fsdp);

// Where an optimizer's loaded state goes: {idx: {name: tensor or value}}.
struct OptimizerLoad {
  torch::optim::Optimizer* optimizer = nullptr;
  std::string key;
  std::vector<ParamRef> refs;                   // the optimizer's parameters
  std::unordered_map<std::string, int> by_fqn;  // index into refs
  Dict state;
  Value groups;  // list, 'params' already as our indices
  bool has_groups = false;
  // Sharded state tensors are TensorRefs whose storage_key indexes this
  // table: LoadOptimizerState allocates each state tensor once and the
  // reader fills it in place (no temporary copy of the optimizer state).
  std::vector<std::function<absl::Status(at::Tensor&)>> readers;
  bool into_live_buffers = true;  // LoadOptions::into_live_optimizer_buffers

  Value Deferred(at::ScalarType dtype, const std::vector<int64_t>& sizes,
                 std::function<absl::Status(at::Tensor&)> read);
};

// A load into optimizer entry `e` (its parameters found in `entries`).
absl::StatusOr<std::unique_ptr<OptimizerLoad>> NewOptimizerLoad(const Entry& e,
                                                                const std::vector<Entry>& entries,
                                                                const LoadOptions& options);

absl::Status FinishOptimizer(OptimizerLoad& load);

// Runs the plan (after its report passed): the reads, the optimizers'
// loads (first, when they read into new tensors), the reshards; calls
// options.before_live_writes before the first write into a live tensor.
absl::Status RunPlan(LoadPlan& plan, std::vector<std::unique_ptr<OptimizerLoad>>& optimizers,
                     const LoadOptions& options);

}  // namespace fabric::strategies::fsdp_internal

#endif  // FABRIC_STRATEGIES_FSDP_CHECKPOINT_INTERNAL_H_
