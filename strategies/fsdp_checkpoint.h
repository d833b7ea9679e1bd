// Saving and loading a training state that holds FSDP-sharded models, as
// Lightning Fabric's FSDPStrategy.save_checkpoint / load_checkpoint do.
//
// Sharded (the default, state_dict_type "sharded"): `path` is a PyTorch DCP
// folder. Every rank writes `__<rank>_0.distcp` with its chunks: model
// tensors as `<key>.<fqn>` (each parameter's dim-0 row block; buffers and
// unsharded modules from rank 0), optimizer state keyed by parameter name as
// FSDP.optim_state_dict makes it (`<key>.state.<fqn>.exp_avg`, sharded like
// its parameter; `<key>.state.<fqn>.step` and `<key>.param_groups.<g>.<field>`
// with `params` a list of FQNs, from rank 0). Rank 0 then writes `meta.pt`
// (torch.save of every entry that is not a model or optimizer) and, after
// gathering every rank's write results, `.metadata` last: a folder without it
// is an incomplete checkpoint and is refused on load. Loading works on any
// world size, including one process with plain modules: each rank reads only
// the saved chunks that overlap its own rows. Python's
// torch.distributed.checkpoint (and Lightning) load such a folder into an
// ordinary model.
//
// Full (state_dict_type "full"): one torch.save file written by rank 0,
// {<model key>: state_dict, <optimizer key>: {state: {fqn: ...},
// param_groups: [...]}, <other keys>: values}. It is gathered one parameter
// (or optimizer state tensor) at a time and streamed to the file, so rank 0
// never holds more than one full parameter beyond its shards. It loads on any
// world size and in a single-device program (module_state.h).
#ifndef FABRIC_STRATEGIES_FSDP_CHECKPOINT_H_
#define FABRIC_STRATEGIES_FSDP_CHECKPOINT_H_

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/value.h"
#include "fabric/state.h"
#include "strategies/fsdp.h"
#include "strategies/process_group.h"

namespace torch::nn {
class Module;
}  // namespace torch::nn
namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace fabric::strategies {

// The training state, as the `state` dict of fabric.save: ordered entries,
// each a sharded model, a plain (replicated or single-process) model, an
// optimizer (over FSDP's shards or a plain model's parameters) or any other
// value (saved in meta.pt). The state does not own the objects.
class FsdpState {
 public:
  enum class Kind { kShardedModel, kModel, kOptimizer, kValue };
  struct Entry {
    std::string key;
    Kind kind = Kind::kValue;
    FullyShardedDataParallel* fsdp = nullptr;
    torch::nn::Module* module = nullptr;
    torch::optim::Optimizer* optimizer = nullptr;
    Value value;
  };

  FsdpState& Model(std::string key, FullyShardedDataParallel& fsdp);
  FsdpState& Model(std::string key, torch::nn::Module& module);
  FsdpState& Optimizer(std::string key, torch::optim::Optimizer& optimizer);
  FsdpState& Set(std::string key, Value value);

  const std::vector<Entry>& entries() const { return entries_; }
  std::vector<Entry>& mutable_entries() { return entries_; }
  // A value entry (after a load: the loaded value), or nullptr.
  const Value* Find(std::string_view key) const;

 private:
  Entry& Add(std::string key, Kind kind);

  std::vector<Entry> entries_;
};

// The FsdpState of a Fabric State: modules (sharded where `sharded_of`
// returns their FSDP wrapper, plain otherwise), optimizers and values.
FsdpState FsdpStateOf(
    const State& state,
    const std::function<FullyShardedDataParallel*(const torch::nn::Module&)>& sharded_of = nullptr);
// Writes the values a load filled into `loaded` back into `state`.
void CopyLoadedValues(const FsdpState& loaded, State& state);

// The forms in which FSDP hands out an optimizer's state (PyTorch FSDP's
// optimizer state-dict transforms, FSDP.optim_state_dict and
// optim_state_dict_to_load).
enum class OptimStateForm {
  // The optimizer's own state_dict(): parameter indices, each sharded state
  // tensor this rank's rows of its parameter (LOCAL_STATE_DICT).
  kLocal,
  // Keyed by parameter FQN (param_groups' params too); each sharded state
  // tensor is this rank's dim-0 row block of the full tensor, as FSDP2's
  // optim_state_dict holds them and as sharded checkpoints store them
  // (SHARDED_STATE_DICT).
  kSharded,
  // Keyed by FQN, each state tensor in its parameter's full shape: what an
  // optimizer over the unwrapped model in one process holds (FULL_STATE_DICT).
  kFull,
};

// The optimizer's state in `form`. `optimizer` runs over fsdp.parameters().
// kFull is a collective (every rank calls it, gathering one tensor at a
// time); with `rank0_only` the other ranks take part in the gathers and
// return an empty dict.
absl::StatusOr<Dict> FsdpOptimizerStateDict(FullyShardedDataParallel& fsdp,
                                            const torch::optim::Optimizer& optimizer,
                                            OptimStateForm form, bool rank0_only = false);

// Loads `state_dict` of `form` into `optimizer` (over fsdp.parameters()): each
// rank takes its own rows of a kFull dict (e.g. one saved by a single-process
// run, given to every rank), a kSharded dict's FQNs are mapped back to
// indices. Not a collective. Errors name the key.
absl::Status FsdpLoadOptimizerStateDict(FullyShardedDataParallel& fsdp,
                                        torch::optim::Optimizer& optimizer,
                                        const Dict& state_dict, OptimStateForm form);

enum class StateDictType { kSharded, kFull };

struct FsdpCheckpointOptions {
  StateDictType state_dict_type = StateDictType::kSharded;
  // As Lightning's `filter`: per state key, which top-level names of the
  // converted entry to keep (a model's state dict keys; an optimizer's
  // "state" / "param_groups"; a dict value's keys).
  std::map<std::string, std::function<bool(std::string_view name)>> filter;
  // Load: missing and unexpected keys are errors (they are always listed).
  bool strict = true;
  bool direct_io = true;
  // Testing: runs on every rank after its shard file is written and before
  // the checkpoint is committed (e.g. to kill a rank mid-save).
  std::function<void()> before_commit;
};

// The name of Lightning's metadata file inside a sharded checkpoint folder.
inline constexpr char kFsdpMetaFileName[] = "meta.pt";

// Saves `state` to `path` (a folder for kSharded, a file for kFull). A
// collective when `context` is given (every rank calls it); `context` may be
// null for a single process (plain models). Every rank returns the same
// status.
absl::Status FsdpSaveCheckpoint(const std::string& path, FsdpState& state,
                                DistributedContext* context,
                                const FsdpCheckpointOptions& options = {});

// Loads `path` (a DCP folder or a torch.save file, told apart by what is on
// disk) into the models, optimizers and value entries of `state`, whatever
// the world size at save time. Returns the saved values that no entry asked
// for (Lightning returns those too). Errors name the file and the key; with
// `strict`, every missing and unexpected key is listed. Needs no collective.
absl::StatusOr<Dict> FsdpLoadCheckpoint(const std::string& path, FsdpState& state,
                                        DistributedContext* context,
                                        const FsdpCheckpointOptions& options = {});

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FSDP_CHECKPOINT_H_
