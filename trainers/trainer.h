// The reference training loop: Lightning's demo Transformer on WikiText-2,
// run through Fabric on one device, with DDP, or with FSDP, saving versioned
// checkpoints that resume exactly. The //trainers:*_train binaries are thin
// flag front ends over RunTrainer (trainer_main.cc).
//
// Exact resume: a checkpoint holds the model, the optimizer, the step
// counter, the data loader's position (epoch, batch, sampler seed) and every
// rank's CPU random generator state (dropout draws from it), so a run stopped
// after a checkpoint and resumed logs the same losses, step for step, as a run
// that was never stopped (same world size, batch size and data; resuming on a
// different world size is allowed but re-seeds the generators).
#ifndef FABRIC_TRAINERS_TRAINER_H_
#define FABRIC_TRAINERS_TRAINER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fabric::trainers {

struct TrainerOptions {
  // Names the run in messages and in the default output folder.
  std::string name = "train";
  // Fabric: "cpu", "cuda"/"gpu" or "auto"; processes; "single_device", "ddp"
  // or "fsdp"; "32-true", "bf16-mixed" or "bf16-true".
  std::string accelerator = "auto";
  int devices = 1;  // per node; 0: from the torchrun/srun environment
  std::string strategy = "single_device";
  // Several machines (FabricOptions): nodes (0: from the environment), this
  // node's rank (-1: $NODE_RANK), node 0's address and port (empty / 0:
  // $MASTER_ADDR / $MASTER_PORT), and how long to wait for every node.
  int num_nodes = 1;
  int node_rank = -1;
  std::string main_address;
  int main_port = 0;
  double rendezvous_timeout_s = 300;
  std::string precision = "32-true";

  // Model and data.
  std::string preset = "tiny";  // TransformerPreset: tiny, demo, 1b
  std::string data_dir;         // WikiText-2 folder
  // "train", "valid", "test" or "auto" (train when its file exists, else
  // valid, with a printed note).
  std::string split = "auto";
  int64_t block_size = 35;
  int64_t batch_size = 8;  // per rank
  double lr = 1e-3;        // AdamW
  double weight_decay = 0.0;
  uint64_t seed = 42;
  int64_t steps = 100;  // total optimizer steps (a resumed run continues to it)

  // Output: out_dir holds metrics.csv and loss.png; checkpoints go to
  // checkpoint_dir (default <out_dir>/checkpoints).
  std::string out_dir;
  std::string checkpoint_dir;
  // Save every this many steps (0: only at the end) and after the last step.
  int64_t checkpoint_interval = 0;
  bool save_last = true;
  // Asynchronous saves (Fabric::SaveAsync): training blocks only while the
  // state is copied; the write runs under the next steps.
  bool async_save = false;
  // "sharded" (FSDP only: a DCP folder) or "full" (one torch.save file);
  // empty: sharded for FSDP, full otherwise.
  std::string state_dict_type;
  // Continue from the newest complete checkpoint in checkpoint_dir (none
  // there: start fresh, with a note).
  bool resume = false;
  // Keep this many newest checkpoints (<= 0: all). Older ones are removed
  // only after a newer one is complete.
  int keep_checkpoints = 3;
  int64_t log_every = 1;
  // After the last save, load that checkpoint back into the live model and
  // optimizer and report the seconds (benchmarks).
  bool time_load = false;
};

// Fills defaults that depend on other fields (out_dir, checkpoint_dir,
// state_dict_type, data_dir) and checks every option, naming the flag.
absl::StatusOr<TrainerOptions> ResolveTrainerOptions(TrainerOptions options);

// Runs the training on this process's rank (launching the others first when
// devices > 1: they re-run this program's main() with the same arguments).
absl::Status RunTrainer(const TrainerOptions& options);

// True when torchrun or srun started this process (RANK, or SLURM_PROCID
// outside an interactive allocation): unset --devices / --num_nodes then
// come from that environment.
bool LaunchedExternally();

// The default WikiText-2 folder: <workspace>/../shared/data/wikitext-2 when
// it exists (the workspace from BUILD_WORKSPACE_DIRECTORY under bazel run,
// else the current folder), else "data/wikitext-2".
std::string DefaultDataDir();

}  // namespace fabric::trainers

#endif  // FABRIC_TRAINERS_TRAINER_H_
