// The example trainers' command line: //trainers:single_device_train,
// //trainers:ddp_train and //trainers:fsdp_train are this file built with a
// different TRAINER_KIND (0, 1, 2), which only changes the defaults of
// --strategy and --devices. See docs/trainers.md.
#include <malloc.h>

#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "trainers/trainer.h"

#ifndef TRAINER_KIND
#define TRAINER_KIND 0
#endif

namespace {
#if TRAINER_KIND == 2
constexpr char kName[] = "fsdp_train";
constexpr char kStrategy[] = "fsdp";
constexpr int kDevices = 2;
#elif TRAINER_KIND == 1
constexpr char kName[] = "ddp_train";
constexpr char kStrategy[] = "ddp";
constexpr int kDevices = 2;
#else
constexpr char kName[] = "single_device_train";
constexpr char kStrategy[] = "single_device";
constexpr int kDevices = 1;
#endif
const fabric::trainers::TrainerOptions kDefaults;

// Whether the command line sets --name (or -name), in either form.
bool Given(int argc, char** argv, absl::string_view name) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--")) absl::ConsumePrefix(&arg, "-");
    if (arg == name || absl::StartsWith(arg, absl::StrCat(name, "="))) return true;
  }
  return false;
}
}  // namespace

ABSL_FLAG(std::string, accelerator, kDefaults.accelerator,
          "cpu, cuda (gpu) or auto (cuda when available)");
ABSL_FLAG(int, devices, kDevices,
          "processes (one per device) on this machine; under torchrun or srun, unset takes "
          "LOCAL_WORLD_SIZE / the tasks per node");
ABSL_FLAG(int, num_nodes, 1,
          "machines; under torchrun or srun, unset takes the environment's node count");
ABSL_FLAG(int, node_rank, -1, "this machine's rank, 0..num_nodes-1 (-1: $NODE_RANK)");
ABSL_FLAG(std::string, main_address, "",
          "address of node 0, which hosts the rendezvous (empty: $MASTER_ADDR, else 127.0.0.1 "
          "on one node)");
ABSL_FLAG(int, main_port, 0,
          "rendezvous port on node 0 (0: $MASTER_PORT, else a free port on one node)");
ABSL_FLAG(double, rendezvous_timeout, kDefaults.rendezvous_timeout_s,
          "seconds to wait for every node to join before naming the missing ranks");
ABSL_FLAG(std::string, strategy, kStrategy, "single_device, ddp or fsdp");
ABSL_FLAG(std::string, precision, kDefaults.precision, "32-true, bf16-mixed or bf16-true");
ABSL_FLAG(std::string, preset, kDefaults.preset,
          "model size: tiny (tests), demo (Lightning's demo), 1b");
ABSL_FLAG(std::string, data_dir, "",
          "WikiText-2 folder (default: <workspace>/../shared/data/wikitext-2 if it exists, "
          "else data/wikitext-2)");
ABSL_FLAG(std::string, split, kDefaults.split,
          "train, valid, test, or auto: the train split (wikitext-2.txt or train.txt) when "
          "present, otherwise valid.txt with a printed note; --split=train fails without it");
ABSL_FLAG(int64_t, block_size, kDefaults.block_size, "tokens per sample");
ABSL_FLAG(int64_t, batch_size, kDefaults.batch_size, "samples per batch, per rank");
ABSL_FLAG(double, lr, kDefaults.lr, "AdamW learning rate");
ABSL_FLAG(double, weight_decay, kDefaults.weight_decay, "AdamW weight decay");
ABSL_FLAG(uint64_t, seed, kDefaults.seed, "seed of the weights, data order and dropout");
ABSL_FLAG(int64_t, steps, kDefaults.steps,
          "total optimizer steps (a resumed run continues up to this step)");
ABSL_FLAG(std::string, out_dir, "",
          "folder for metrics.csv and loss.png (default runs/<trainer name>, relative to where "
          "you ran bazel)");
ABSL_FLAG(std::string, checkpoint_dir, "", "checkpoint folder (default <out_dir>/checkpoints)");
ABSL_FLAG(int64_t, checkpoint_interval, kDefaults.checkpoint_interval,
          "save every N steps (0: only after the last step)");
ABSL_FLAG(bool, save_last, kDefaults.save_last, "save after the last step");
ABSL_FLAG(bool, async_save, kDefaults.async_save,
          "save asynchronously: block only for the copy, write in the background");
ABSL_FLAG(std::string, state_dict_type, "",
          "sharded (FSDP: a DCP folder, one file per rank) or full (one torch.save file); "
          "default sharded for fsdp, full otherwise");
ABSL_FLAG(bool, resume, false, "continue from the newest complete checkpoint in checkpoint_dir");
ABSL_FLAG(int, keep_checkpoints, kDefaults.keep_checkpoints,
          "keep the N newest checkpoints (0: all); older ones are removed after a newer one "
          "is complete");
ABSL_FLAG(int64_t, log_every, kDefaults.log_every, "print a progress line every N steps");
ABSL_FLAG(bool, time_load, false,
          "after the last save, load it back and report the seconds (benchmarks)");

int main(int argc, char** argv) {
#ifdef M_MMAP_THRESHOLD
  // Big tensors straight from mmap, so memory freed after FSDP shards the
  // model goes back to the system instead of staying in malloc's heap (glibc
  // otherwise raises the threshold to 32 MiB after the first large free).
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
  absl::SetProgramUsageMessage(absl::StrCat(
      "Trains Lightning's demo Transformer on WikiText-2 with Fabric (", kStrategy,
      " by default).\nExample: bazel run //trainers:", kName, " -- --steps=50 --preset=tiny"));
  // --help lists this file's flags (absl matches files named after the
  // program by default, and the three trainers share this one).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::StrContains(path, "trainer_main");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  fabric::trainers::TrainerOptions o;
  o.name = kName;
  o.accelerator = absl::GetFlag(FLAGS_accelerator);
  o.devices = absl::GetFlag(FLAGS_devices);
  o.num_nodes = absl::GetFlag(FLAGS_num_nodes);
  // Unset under torchrun or srun: the environment says how many (0).
  if (fabric::trainers::LaunchedExternally()) {
    if (!Given(argc, argv, "devices")) o.devices = 0;
    if (!Given(argc, argv, "num_nodes")) o.num_nodes = 0;
  }
  o.node_rank = absl::GetFlag(FLAGS_node_rank);
  o.main_address = absl::GetFlag(FLAGS_main_address);
  o.main_port = absl::GetFlag(FLAGS_main_port);
  o.rendezvous_timeout_s = absl::GetFlag(FLAGS_rendezvous_timeout);
  o.strategy = absl::GetFlag(FLAGS_strategy);
  o.precision = absl::GetFlag(FLAGS_precision);
  o.preset = absl::GetFlag(FLAGS_preset);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.split = absl::GetFlag(FLAGS_split);
  o.block_size = absl::GetFlag(FLAGS_block_size);
  o.batch_size = absl::GetFlag(FLAGS_batch_size);
  o.lr = absl::GetFlag(FLAGS_lr);
  o.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.out_dir = absl::GetFlag(FLAGS_out_dir);
  o.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  o.checkpoint_interval = absl::GetFlag(FLAGS_checkpoint_interval);
  o.save_last = absl::GetFlag(FLAGS_save_last);
  o.async_save = absl::GetFlag(FLAGS_async_save);
  o.state_dict_type = absl::GetFlag(FLAGS_state_dict_type);
  o.resume = absl::GetFlag(FLAGS_resume);
  o.keep_checkpoints = absl::GetFlag(FLAGS_keep_checkpoints);
  o.log_every = absl::GetFlag(FLAGS_log_every);
  o.time_load = absl::GetFlag(FLAGS_time_load);
  if (absl::Status s = fabric::trainers::RunTrainer(o); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", kName, std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
