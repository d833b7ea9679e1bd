// Optimizer state in PyTorch's Python state_dict layout, as a Value Dict:
//
//   {'state': {0: {'step': tensor(3.), 'exp_avg': T, 'exp_avg_sq': T}, ...},
//    'param_groups': [{'lr': 0.001, 'betas': (0.9, 0.999), ..., 'params': [0, 1]}]}
//
// with exactly the keys, key order and value types torch 2.11 writes for
// torch.optim.SGD, Adam and AdamW, so Python's Optimizer.load_state_dict accepts
// what we save and we accept what Python saved. Parameters are numbered across
// groups in group order, as Python numbers them.
//
// LibTorch vs Python, for exact cross-language resume (CPU, torch 2.11):
//  - SGD (momentum, dampening, nesterov, weight decay) and AdamW's decoupled
//    decay compute the same operations in the same order.
//  - Adam/AdamW: Python updates exp_avg with lerp_(grad, 1 - beta1), LibTorch
//    with mul_(beta1).add_(grad, 1 - beta1); the two round differently, so
//    results can differ in the last bits from the second step on.
//  - Python's step is a float32 tensor, LibTorch's an int64; equal up to 2^24
//    steps. Python's CPU default (foreach=None, fused=None) is the single-tensor
//    path, the one LibTorch implements.
//  - LibTorch has no maximize, capturable, differentiable, foreach or fused:
//    we write Python's defaults, refuse maximize=True on load, and ignore the
//    rest (they choose kernels, not the math). Adam's decoupled_weight_decay
//    must agree with the LibTorch class (Adam: False, AdamW: True) unless
//    weight_decay is 0. Extra group keys (e.g. a scheduler's initial_lr) are
//    not kept.
#ifndef FABRIC_CHECKPOINT_OPTIMIZER_STATE_H_
#define FABRIC_CHECKPOINT_OPTIMIZER_STATE_H_

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/tensor_source.h"
#include "checkpoint/value.h"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace fabric {

// The optimizer's state_dict. State tensors are the optimizer's own, detached
// (no copy); 'step' is a new float32 scalar tensor. Errors for optimizer types
// other than torch::optim::SGD, Adam and AdamW, naming the type.
absl::StatusOr<Dict> OptimizerStateDict(const torch::optim::Optimizer& optimizer);

// Replaces the optimizer's per-parameter state and its groups'
// hyperparameters with `state`, like Python's load_state_dict: state tensors
// are copied (never aliased) to their parameter's device, and to its dtype
// when the parameter is floating point; 'step' may be a tensor, an int or an
// integral float. Checks the number of groups and of parameters per group and
// each state tensor's shape against its parameter before changing anything.
// Errors name the key, prefixed with `key_prefix`, e.g.
// "optimizer.state.3.exp_avg: shape [4] vs parameter shape [2,2]".
//
// Unlike Python, a tensor ref read from a file goes into the optimizer's
// existing buffer for that state when it has the file's shape and dtype, so
// that reloading a checkpoint into a live optimizer needs no second copy of
// its state (an I/O error partway leaves those buffers partly read, as
// LoadModuleState leaves parameters). With `batch`, such reads happen in one
// call after every check. With `into_existing_buffers` false every state
// tensor is new: nothing of the optimizer changes unless the whole load
// succeeds (LoadOptions::into_live_optimizer_buffers).
absl::Status LoadOptimizerState(torch::optim::Optimizer& optimizer, const Dict& state,
                                const TensorSource& source = nullptr,
                                std::string_view key_prefix = "optimizer",
                                const TensorBatchSource& batch = nullptr,
                                bool into_existing_buffers = true);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_OPTIMIZER_STATE_H_
