#ifndef FABRIC_TESTS_FSDP_FSDP_TEST_UTIL_H_
#define FABRIC_TESTS_FSDP_FSDP_TEST_UTIL_H_

// The model and training loop the FSDP tests share: a residual MLP with three
// wrapped blocks whose sizes do not divide by 2, 3 or 4 (so shards are
// uneven and some ranks own no row of a small parameter), a 0-dim parameter
// and a buffer; data drawn per global step, so any world size sees the same
// global batch.

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/optimizer.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/value.h"
#include "strategies/fsdp.h"
#include "strategies/launcher.h"
#include "strategies/process_group.h"

namespace fabric::testing {

inline constexpr int kIn = 6, kWidth = 9, kOut = 3, kGlobalBatch = 12;

struct Block : torch::nn::Module {
  explicit Block(int width);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

struct Net : torch::nn::Module {
  explicit Net(int blocks = 3);
  // With `fsdp`, each block runs through fsdp->Call (kFullShard needs it).
  at::Tensor forward(const at::Tensor& x, strategies::FullyShardedDataParallel* fsdp = nullptr);
  torch::nn::Linear inp{nullptr}, head{nullptr};
  std::vector<std::shared_ptr<Block>> blocks;
  at::Tensor scale;    // 0-dim parameter
  at::Tensor running;  // buffer
};

std::shared_ptr<Net> MakeNet(int seed);
// Wraps every Block.
strategies::FsdpWrapPolicy BlockPolicy();

// The global batch of step `step` and this rank's slice of it.
void Batch(int step, int rank, int world, at::Tensor* x, at::Tensor* y);

// One optimizer step on the global batch of `step`: FSDP when `fsdp` is
// given (each rank its slice), else the whole batch in one process.
absl::Status TrainStep(Net& net, strategies::FullyShardedDataParallel* fsdp,
                       torch::optim::Optimizer& opt, int step, int rank, int world);

// Every parameter's full tensor (gathered from the shards with FSDP), by name.
absl::StatusOr<std::map<std::string, at::Tensor>> FullParams(
    Net& net, strategies::FullyShardedDataParallel* fsdp);

absl::Status ExpectClose(const at::Tensor& a, const at::Tensor& b, double rtol, double atol,
                         const std::string& what);

// Runs `rank_fn` on `world` processes: this process is rank 0, the others
// re-execute this binary with `env` (their main() must dispatch on it).
absl::Status RunRanks(int world, const std::map<std::string, std::string>& env,
                      const std::function<absl::Status(const strategies::ClusterEnvironment&)>&
                          rank_fn,
                      absl::Status* children_status = nullptr);

// A process group for `cluster` with a short timeout.
absl::StatusOr<std::shared_ptr<strategies::DistributedContext>> MakeContext(
    const strategies::ClusterEnvironment& cluster, int timeout_s = 60);

// The reference run of the checkpoint tests, on this world (N ranks): a Net
// wrapped per block trains kSavedSteps AdamW steps, then saves
//   ShardedPath(dir, N): the sharded checkpoint {model, optimizer, step, extra}
//   FullPath(dir, N):    the same as a full checkpoint
//   RefPath(dir, N):     torch.save of the gathered full tensors ("p.<fqn>",
//                        "exp_avg.<fqn>", "exp_avg_sq.<fqn>", "step.<fqn>")
//   ContPath(dir, N):    the parameters after kMoreSteps more steps.
inline constexpr int kSavedSteps = 3, kMoreSteps = 2;
inline constexpr double kLr = 1e-2;
absl::Status SaveReferenceRun(const strategies::ClusterEnvironment& c, const std::string& dir);
std::string ShardedPath(const std::string& dir, int n);
std::string FullPath(const std::string& dir, int n);
std::string RefPath(const std::string& dir, int n);
std::string ContPath(const std::string& dir, int n);
// The "extra" value entry of the reference run.
Value ExtraValue();
// FSDP over `net`, one unit per block.
std::unique_ptr<strategies::FullyShardedDataParallel> WrapBlocks(
    std::shared_ptr<Net> net, std::shared_ptr<strategies::DistributedContext> ctx,
    absl::Status* status);
// The optimizer state of its i-th parameter.
absl::StatusOr<Dict> ParamState(const torch::optim::Optimizer& opt, int i);

// A world of one in this process.
absl::StatusOr<std::shared_ptr<strategies::DistributedContext>> SingleContext();

}  // namespace fabric::testing

#endif  // FABRIC_TESTS_FSDP_FSDP_TEST_UTIL_H_
