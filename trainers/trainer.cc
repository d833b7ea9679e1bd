#include "trainers/trainer.h"

#include <sys/resource.h>
#include <unistd.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/time.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "checkpoint/file_io.h"
#include "checkpoint/remove_checkpoint.h"
#include "checkpoint/value.h"
#include "fabric/fabric.h"
#include "strategies/cluster_environment.h"
#include "strategies/fsdp.h"
#include "strategies/process_group.h"
#include "strategies/strategy.h"
#include "trainers/checkpoints.h"
#include "trainers/png.h"
#include "trainers/transformer.h"
#include "trainers/wikitext2.h"

namespace fabric::trainers {
namespace fs = std::filesystem;
using strategies::DistributedContext;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Memory {
  double rss_mib = 0;
  double peak_mib = 0;
};

// This process's resident memory now and at its peak (CPU training: that is
// the memory the run needs).
Memory ReadMemory() {
  Memory m;
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (statm >> size >> resident) {
    m.rss_mib = static_cast<double>(resident) * sysconf(_SC_PAGESIZE) / (1 << 20);
  }
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) == 0) m.peak_mib = static_cast<double>(ru.ru_maxrss) / 1024;
  return m;
}

std::string Gib(double mib) { return absl::StrFormat("%.2f GiB", mib / 1024); }

std::string ErrorText(const std::exception& e) {
  // c10::Error's what() carries a C++ backtrace; the first line is the message.
  std::string s = e.what();
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

// ---------------------------------------------------------------------------
// The generators' state: dropout draws from the default CPU generator.

at::Tensor CpuRngState() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void SetCpuRngState(const at::Tensor& state) {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// ---------------------------------------------------------------------------
// How a strategy runs the model and saves it.

class Engine {
 public:
  virtual ~Engine() = default;
  virtual at::Tensor ForwardLoss(const at::Tensor& inputs, const at::Tensor& target) = 0;
  virtual absl::Status Backward(const at::Tensor& loss) = 0;
  virtual torch::optim::Optimizer& optimizer() = 0;
  // Saves model, optimizer and `values` (plain entries) to `path`.
  virtual absl::Status Save(const std::string& path, const Dict& values) = 0;
  // Save, returning once the state is staged (Fabric::SaveAsync).
  virtual absl::Status SaveAsync(const std::string& path, const Dict& values) = 0;
  // Restores model and optimizer and replaces each entry of `values` by the
  // saved one (all must be present).
  virtual absl::Status Load(const std::string& path, Dict& values) = 0;
};

// Every strategy through Fabric: it places, wraps (DDP) or shards (FSDP),
// syncs gradients and saves (one file, or a DCP folder under FSDP).
class FabricEngine : public Engine {
 public:
  FabricEngine(Fabric& fabric, std::shared_ptr<Transformer> model,
               std::shared_ptr<torch::optim::AdamW> opt)
      : fabric_(fabric), model_(std::move(model)), opt_(std::move(opt)) {}

  at::Tensor ForwardLoss(const at::Tensor& inputs, const at::Tensor& target) override {
    if (strategies::FullyShardedDataParallel* fsdp = fabric_.Fsdp(*model_)) {
      return FsdpForwardLoss(*fsdp, inputs, target);
    }
    AutocastGuard autocast = fabric_.Autocast();
    at::Tensor log_probs = model_->forward(inputs, target);
    return TransformerLoss(log_probs.to(at::kFloat), target);
  }
  absl::Status Backward(const at::Tensor& loss) override { return fabric_.Backward(loss); }
  torch::optim::Optimizer& optimizer() override { return *opt_; }

  absl::Status Save(const std::string& path, const Dict& values) override {
    State state = MakeState(values);
    return fabric_.Save(path, state);
  }
  absl::Status SaveAsync(const std::string& path, const Dict& values) override {
    State state = MakeState(values);
    return fabric_.SaveAsync(path, state).status();
  }
  absl::Status Load(const std::string& path, Dict& values) override {
    State state = MakeState(values);
    FABRIC_RETURN_IF_ERROR(fabric_.Load(path, state, /*strict=*/true).status());
    for (auto& [k, v] : values.mutable_items()) v = state[k.as_string()].value();
    return absl::OkStatus();
  }

 private:
  State MakeState(const Dict& values) const {
    State state{{"model", std::static_pointer_cast<torch::nn::Module>(model_)},
                {"optimizer", opt_}};
    for (const auto& [k, v] : values) state.Set(k.as_string(), StateEntry(v));
    return state;
  }

  // Transformer::forward with each encoder and decoder layer run inside its
  // FSDP unit (full_shard: gathered for its forward, freed, gathered again
  // for its backward); the root unit (embedding, final norms, output
  // projection) is gathered around the whole forward. Under bf16-mixed FSDP
  // computes in bf16 itself (CastInput), so no autocast.
  at::Tensor FsdpForwardLoss(strategies::FullyShardedDataParallel& fsdp, const at::Tensor& inputs,
                             const at::Tensor& target) {
    Transformer& m = *model_;
    const double scale = std::sqrt(static_cast<double>(m.config().ninp));
    at::Tensor logits = fsdp.Forward([&] {
      at::Tensor src = fsdp.CastInput(m.pos_encoder->forward(m.embedding->forward(inputs) * scale));
      at::Tensor tgt = fsdp.CastInput(m.pos_encoder->forward(m.embedding->forward(target) * scale));
      at::Tensor memory = src;
      for (const auto& layer : m.transformer->encoder->layers->layers()) {
        memory = fsdp.Call(*layer, [&] { return layer->forward(memory); });
      }
      memory = m.transformer->encoder->norm->forward(memory);
      at::Tensor x = tgt;
      for (const auto& layer : m.transformer->decoder->layers->layers()) {
        x = fsdp.Call(*layer, [&] { return layer->forward(x, memory); });
      }
      x = m.transformer->decoder->norm->forward(x);
      return m.decoder->forward(x);
    });
    at::Tensor log_probs =
        at::log_softmax(logits.to(at::kFloat), -1).view({-1, m.config().vocab_size});
    return TransformerLoss(log_probs, target);
  }

  Fabric& fabric_;
  std::shared_ptr<Transformer> model_;
  std::shared_ptr<torch::optim::AdamW> opt_;
};

// ---------------------------------------------------------------------------
// metrics.csv: one row per step, rewritten on resume up to the resumed step.

struct MetricsRow {
  int64_t step = 0;
  int64_t epoch = 0;
  double loss = 0;
  double tokens_per_sec = 0;
  double step_seconds = 0;
  double rss_mib = 0;
  double peak_rss_mib = 0;
};

constexpr char kMetricsHeader[] =
    "step,epoch,loss,tokens_per_sec,step_seconds,rss_mib,peak_rss_mib";

std::string FormatRow(const MetricsRow& r) {
  return absl::StrFormat("%d,%d,%.9g,%.1f,%.6f,%.1f,%.1f", r.step, r.epoch, r.loss,
                         r.tokens_per_sec, r.step_seconds, r.rss_mib, r.peak_rss_mib);
}

// The rows of an existing metrics file with step <= `up_to`.
std::vector<MetricsRow> ReadMetrics(const std::string& path, int64_t up_to) {
  std::vector<MetricsRow> rows;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ',');
    MetricsRow r;
    if (f.size() != 7 || !absl::SimpleAtoi(f[0], &r.step)) continue;  // header or junk
    if (r.step > up_to) continue;
    (void)absl::SimpleAtoi(f[1], &r.epoch);
    (void)absl::SimpleAtod(f[2], &r.loss);
    (void)absl::SimpleAtod(f[3], &r.tokens_per_sec);
    (void)absl::SimpleAtod(f[4], &r.step_seconds);
    (void)absl::SimpleAtod(f[5], &r.rss_mib);
    (void)absl::SimpleAtod(f[6], &r.peak_rss_mib);
    rows.push_back(r);
  }
  return rows;
}

// Rewritten whole (at checkpoints and at the end, not every step), so that it
// always matches a saved step: a crash leaves the old file or the new one.
absl::Status WriteMetrics(const std::string& path, const std::vector<MetricsRow>& rows) {
  std::string text = absl::StrCat(kMetricsHeader, "\n");
  for (const MetricsRow& r : rows) absl::StrAppend(&text, FormatRow(r), "\n");
  return AtomicWriteFile(path, text);
}

Dict Hparams(const TrainerOptions& o, const TransformerConfig& c, const WikiText2& data,
             const std::string& split, int world_size) {
  Dict d;
  d.Set("preset", o.preset);
  d.Set("vocab_size", c.vocab_size);
  d.Set("ninp", c.ninp);
  d.Set("nhead", c.nhead);
  d.Set("nhid", c.nhid);
  d.Set("nlayers", c.nlayers);
  d.Set("dropout", c.dropout);
  d.Set("block_size", o.block_size);
  d.Set("split", split);
  d.Set("data_file", data.path());
  d.Set("strategy", o.strategy);
  d.Set("precision", o.precision);
  d.Set("world_size", world_size);
  d.Set("batch_size", o.batch_size);
  d.Set("lr", o.lr);
  d.Set("seed", static_cast<int64_t>(o.seed));
  return d;
}

// A value of `d` as an int, or an error naming the checkpoint and key.
// The plain values a checkpoint restores besides model and optimizer, with
// placeholders that a load replaces.
Dict CheckpointValues() {
  Dict values;
  values.Set("step", int64_t{0});
  values.Set("loader", Value::MakeDict());
  values.Set("rng_states", Value());
  values.Set("hparams", Value::MakeDict());
  return values;
}

absl::StatusOr<int64_t> IntEntry(const Dict& d, const std::string& key, const std::string& where) {
  const Value* v = d.Find(key);
  if (v == nullptr || !v->is_int()) {
    return absl::DataLossError(absl::StrCat(where, ": entry '", key, "' is missing or not an int"));
  }
  return v->as_int();
}

bool FileExists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

}  // namespace

bool LaunchedExternally() {
  absl::StatusOr<strategies::ClusterEnvironment> c = strategies::DetectClusterEnvironment();
  return c.ok() && !c->needs_launch();
}

std::string DefaultDataDir() {
  const char* ws = std::getenv("BUILD_WORKSPACE_DIRECTORY");
  const std::string base = ws != nullptr && *ws != '\0' ? std::string(ws) : std::string(".");
  const std::string shared = (fs::path(base) / ".." / "shared" / "data" / "wikitext-2")
                                 .lexically_normal()
                                 .string();
  if (FileExists(shared)) return shared;
  return ResolveUserPath("data/wikitext-2");
}

absl::StatusOr<TrainerOptions> ResolveTrainerOptions(TrainerOptions o) {
  if (o.strategy != "single_device" && o.strategy != "ddp" && o.strategy != "fsdp") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--strategy: '", o.strategy, "' is not one of single_device, ddp, fsdp"));
  }
  if (o.devices < 0) return absl::InvalidArgumentError("--devices: must be at least 1");
  if (o.num_nodes < 0) return absl::InvalidArgumentError("--num_nodes: must be at least 1");
  if (!(o.rendezvous_timeout_s > 0)) {
    return absl::InvalidArgumentError("--rendezvous_timeout: must be positive (seconds)");
  }
  if (o.strategy == "single_device" && (o.devices > 1 || o.num_nodes > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--devices=", o.devices, ": the single_device strategy runs one process "
        "(use //trainers:ddp_train or //trainers:fsdp_train for more)"));
  }
  if (o.batch_size < 1) return absl::InvalidArgumentError("--batch_size: must be at least 1");
  if (o.block_size < 1 || o.block_size >= kPositionalEncodingMaxLen) {
    return absl::InvalidArgumentError(
        absl::StrCat("--block_size: must be in [1, ", kPositionalEncodingMaxLen - 1, "]"));
  }
  if (!(o.lr > 0)) return absl::InvalidArgumentError("--lr: must be positive");
  if (o.steps < 0) return absl::InvalidArgumentError("--steps: must not be negative");
  if (o.checkpoint_interval < 0) {
    return absl::InvalidArgumentError("--checkpoint_interval: must not be negative");
  }
  if (o.log_every < 1) o.log_every = 1;
  if (o.state_dict_type.empty()) o.state_dict_type = o.strategy == "fsdp" ? "sharded" : "full";
  if (o.state_dict_type != "sharded" && o.state_dict_type != "full") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--state_dict_type: '", o.state_dict_type, "' is not one of sharded, full"));
  }
  if (o.state_dict_type == "sharded" && o.strategy != "fsdp") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--state_dict_type=sharded needs --strategy=fsdp (", o.strategy,
        " saves one full file)"));
  }
  if (o.split != "auto") {
    if (absl::StatusOr<WikiText2Split> s = ParseWikiText2Split(o.split); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--split: '", o.split, "' is not one of auto, train, valid, test"));
    }
  }
  if (absl::StatusOr<TransformerConfig> c = TransformerPreset(o.preset, 100); !c.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--preset: ", c.status().message()));
  }
  o.data_dir = o.data_dir.empty() ? DefaultDataDir() : ResolveUserPath(o.data_dir);
  o.out_dir = ResolveUserPath(o.out_dir.empty() ? absl::StrCat("runs/", o.name) : o.out_dir);
  o.checkpoint_dir = o.checkpoint_dir.empty() ? (fs::path(o.out_dir) / "checkpoints").string()
                                              : ResolveUserPath(o.checkpoint_dir);
  return o;
}

absl::Status RunTrainer(const TrainerOptions& raw) {
  FABRIC_ASSIGN_OR_RETURN(const TrainerOptions o, ResolveTrainerOptions(raw));

  // --- Fabric: launch the ranks and connect them.
  FabricOptions fo;
  fo.accelerator = o.accelerator;
  fo.devices = o.devices;
  fo.num_nodes = o.num_nodes;
  fo.node_rank = o.node_rank;
  fo.main_address = o.main_address;
  fo.main_port = o.main_port;
  fo.rendezvous_timeout = absl::Seconds(o.rendezvous_timeout_s);
  fo.option_prefix = "--";
  fo.strategy = o.strategy;
  fo.precision = o.precision;
  fo.state_dict_type = o.state_dict_type;
  // FSDP units: every encoder and decoder layer (the root unit holds the rest).
  fo.sharding_strategy = "full_shard";
  fo.fsdp_wrap_module_types = {"TransformerEncoderLayer", "TransformerDecoderLayer"};
  FABRIC_ASSIGN_OR_RETURN(const std::unique_ptr<Fabric> fabric_owner, Fabric::Create(fo));
  Fabric& fabric = *fabric_owner;
  FABRIC_RETURN_IF_ERROR(fabric.Launch());
  const int rank = fabric.global_rank(), world = fabric.world_size();
  const c10::Device device = fabric.device();
  FABRIC_ASSIGN_OR_RETURN(strategies::Strategy * strategy, fabric.strategy());
  DistributedContext* context = strategy->context();  // null for one process
  if (const int local = context ? context->cluster().local_world_size : 1; local > 1) {
    // The ranks share this machine's cores (as torchrun's OMP_NUM_THREADS).
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    at::set_num_threads(std::max(1, cores / local));
  }

  // --- Data.
  std::string split_name = o.split;
  if (split_name == "auto") {
    split_name = "train";
    bool have_train = false;
    for (const std::string& n : WikiText2FileNames(WikiText2Split::kTrain)) {
      have_train = have_train || FileExists((fs::path(o.data_dir) / n).string());
    }
    if (!have_train) {
      split_name = "valid";
      fabric.Print(absl::StrCat("note: no train split (wikitext-2.txt or train.txt) in ", o.data_dir,
                                "; training on the valid split (valid.txt). Pass --split=train "
                                "to require the train split."));
    }
  }
  absl::StatusOr<WikiText2> data_or =
      WikiText2::Load(o.data_dir, *ParseWikiText2Split(split_name), o.block_size);
  if (!data_or.ok()) {
    return absl::Status(data_or.status().code(),
                        absl::StrCat("--data_dir/--split: ", data_or.status().message()));
  }
  auto data = std::make_shared<const WikiText2>(*std::move(data_or));
  WikiText2LoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.drop_last = true;  // equal batch shapes on every step and rank
  lo.sampler.num_replicas = world;
  lo.sampler.rank = rank;
  lo.sampler.seed = o.seed;
  FABRIC_ASSIGN_OR_RETURN(WikiText2Loader loader, WikiText2Loader::Create(data, lo));
  if (loader.batches_per_epoch() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--batch_size=", o.batch_size, ": ", data->path(), " has ", data->size(),
        " samples, fewer than one batch per rank on ", world, " ranks"));
  }

  // --- Model (the same initial weights on every rank: seeded, and DDP/FSDP
  // broadcast rank 0's anyway).
  TransformerConfig config = *TransformerPreset(o.preset, data->vocab_size());
  const int64_t num_params = TransformerParameterCount(config);
  fabric.Print(absl::StrCat(o.name, ": ", o.strategy, " on ", world, " x ", device.str(), ", ",
                            o.precision, ", preset ", o.preset, " (", num_params,
                            " parameters, vocab ", config.vocab_size, "), ", split_name, " split: ",
                            data->size(), " samples of ", o.block_size, " tokens, ",
                            loader.batches_per_epoch(), " batches of ", o.batch_size,
                            " per rank per epoch"));
  torch::manual_seed(o.seed);
  auto model = std::make_shared<Transformer>(config);
  FABRIC_RETURN_IF_ERROR(fabric.SetupModule(model));
  // Under FSDP: this rank's shards.
  auto opt = std::make_shared<torch::optim::AdamW>(
      fabric.Parameters(std::static_pointer_cast<torch::nn::Module>(model)),
      torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
  std::unique_ptr<Engine> engine = std::make_unique<FabricEngine>(fabric, model, opt);
  model->train();
  // Each rank its own dropout stream.
  torch::manual_seed(o.seed + 1000003ULL * static_cast<uint64_t>(rank + 1));

  // --- Resume.
  int64_t step = 0;
  std::error_code ec;
  if (rank == 0) fs::create_directories(o.checkpoint_dir, ec);
  if (rank == 0) fs::create_directories(o.out_dir, ec);
  FABRIC_RETURN_IF_ERROR(fabric.Barrier());
  // Several nodes must share the checkpoint folder: refuse before training.
  FABRIC_RETURN_IF_ERROR(fabric.CheckSharedFolder(o.checkpoint_dir));
  std::string last_checkpoint;
  if (o.resume) {
    FABRIC_ASSIGN_OR_RETURN(const std::optional<CheckpointEntry> latest,
                            LatestCheckpoint(o.checkpoint_dir));
    if (!latest.has_value()) {
      fabric.Print(absl::StrCat("--resume: no complete checkpoint in ", o.checkpoint_dir,
                                "; starting from step 0"));
    } else {
      const std::string path = latest->path;
      Dict values = CheckpointValues();
      const double t0 = Now();
      FABRIC_RETURN_IF_ERROR(engine->Load(path, values));
      FABRIC_ASSIGN_OR_RETURN(step, IntEntry(values, "step", path));
      const Value* loader_value = values.Find("loader");
      if (!loader_value->is_dict()) {
        return absl::DataLossError(absl::StrCat(path, ": entry 'loader' is not a dict"));
      }
      LoaderPosition pos;
      for (const char* key : {"epoch", "batch_index", "seed"}) {
        FABRIC_ASSIGN_OR_RETURN(const int64_t v,
                                IntEntry(loader_value->as_dict(), key, path + " loader"));
        if (std::string(key) == "epoch") pos.epoch = v;
        else if (std::string(key) == "batch_index") pos.batch_index = v;
        else pos.seed = static_cast<uint64_t>(v);
      }
      if (absl::Status s = loader.Restore(pos); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat(path, ": loader position: ", s.message(),
                                                   " (resume with the same --batch_size, "
                                                   "--devices and data)"));
      }
      const Value* rng = values.Find("rng_states");
      const int64_t state_bytes = CpuRngState().numel();
      if (rng->is_tensor() && rng->as_tensor().scalar_type() == at::kByte &&
          rng->as_tensor().dim() == 2 && rng->as_tensor().size(0) == world &&
          rng->as_tensor().size(1) == state_bytes) {
        // A fresh tensor: set_state reads the bytes from the storage's start.
        SetCpuRngState(rng->as_tensor()[rank].clone());
      } else if (!rng->is_tensor() || rng->as_tensor().dim() != 2 ||
                 rng->as_tensor().size(1) != state_bytes) {
        return absl::DataLossError(absl::StrCat(
            path, ": entry 'rng_states' is not a uint8 [world_size, ", state_bytes, "] tensor"));
      } else {
        fabric.Print(absl::StrCat("note: ", path, " holds random states for another world size; "
                                  "re-seeding dropout (the run continues, not bit-exactly)"));
        torch::manual_seed(o.seed + 7919ULL * static_cast<uint64_t>(step) +
                           1000003ULL * static_cast<uint64_t>(rank + 1));
      }
      last_checkpoint = path;
      fabric.Print(absl::StrFormat("resumed from %s at step %d (epoch %d, batch %d) in %.2f s",
                                   path, step, pos.epoch, pos.batch_index, Now() - t0));
    }
  }

  // --- Metrics (rank 0).
  const std::string metrics_path = (fs::path(o.out_dir) / "metrics.csv").string();
  const std::string png_path = (fs::path(o.out_dir) / "loss.png").string();
  std::vector<MetricsRow> rows;
  if (rank == 0 && step > 0) rows = ReadMetrics(metrics_path, step);

  const Dict hparams = Hparams(o, config, *data, split_name, world);
  double total_save_seconds = 0, last_save_seconds = 0;
  // Asynchronous saves: the background writes' seconds, and the path in flight.
  double total_write_seconds = 0, last_write_seconds = 0;
  std::string in_flight;
  int saves = 0, async_saves = 0, refused_async = 0;
  // Prunes once the newest save is complete on every rank.
  auto prune = [&]() -> absl::StatusOr<std::string> {
    std::string removed_note;
    if (rank == 0) {
      FABRIC_ASSIGN_OR_RETURN(const std::vector<std::string> removed,
                              PruneCheckpoints(o.checkpoint_dir, o.keep_checkpoints));
      if (!removed.empty()) removed_note = absl::StrCat(", removed ", removed.size(), " older");
    }
    FABRIC_RETURN_IF_ERROR(fabric.Barrier());
    return removed_note;
  };
  // Waits for the asynchronous save in flight; its commit line.
  auto finish_async = [&]() -> absl::Status {
    if (in_flight.empty()) return absl::OkStatus();
    FABRIC_RETURN_IF_ERROR(fabric.WaitForSave());
    const strategies::AsyncSaveTimes t = fabric.last_async_save();
    last_write_seconds = absl::ToDoubleSeconds(t.write);
    total_write_seconds += last_write_seconds;
    last_checkpoint = in_flight;
    in_flight.clear();
    FABRIC_ASSIGN_OR_RETURN(std::string removed_note, prune());
    fabric.Print(absl::StrFormat("committed %s: background write %.2f s%s", last_checkpoint,
                                 last_write_seconds, removed_note));
    return absl::OkStatus();
  };
  auto save = [&](int64_t at_step) -> absl::Status {
    const std::string path = (fs::path(o.checkpoint_dir) / CheckpointName(at_step)).string();
    // Training waits here if the previous write is still going.
    const double wait0 = Now();
    FABRIC_RETURN_IF_ERROR(finish_async());
    const double waited = Now() - wait0;
    // A leftover of an interrupted save under the same name goes first,
    // renamed out of the listing before its contents are deleted.
    // Every rank learns rank 0's verdict: no rank waits on a save that failed.
    absl::Status cleared = rank == 0 ? RemoveCheckpoint(path) : absl::OkStatus();
    if (context != nullptr && world > 1) cleared = context->ShareStatus(cleared);
    FABRIC_RETURN_IF_ERROR(cleared);
    FABRIC_RETURN_IF_ERROR(fabric.Barrier());
    Dict values;
    values.Set("step", at_step);
    const LoaderPosition pos = loader.position();
    Dict loader_state;
    loader_state.Set("epoch", pos.epoch);
    loader_state.Set("batch_index", pos.batch_index);
    loader_state.Set("seed", static_cast<int64_t>(pos.seed));
    values.Set("loader", loader_state);
    at::Tensor rng = CpuRngState();
    if (context != nullptr && world > 1) {
      FABRIC_ASSIGN_OR_RETURN(const std::vector<at::Tensor> all, context->AllGather(rng));
      rng = at::stack(all);
    } else {
      rng = rng.unsqueeze(0);
    }
    values.Set("rng_states", rng);
    values.Set("hparams", Value(hparams));
    const double t0 = Now();
    absl::Status async = o.async_save ? engine->SaveAsync(path, values) : absl::OkStatus();
    if (absl::IsResourceExhausted(async)) {
      // The host cannot hold a second copy of the state: this save blocks.
      fabric.Print(absl::StrCat("async save refused, saving synchronously: ", async.message()));
      ++refused_async;
    } else if (o.async_save) {
      FABRIC_RETURN_IF_ERROR(async);
      // Blocked: the wait for the previous write plus the staging.
      last_save_seconds = waited + (Now() - t0);
      total_save_seconds += last_save_seconds;
      ++saves;
      in_flight = path;
      ++async_saves;
      fabric.Print(absl::StrFormat(
          "saving %s (%s) in the background: training blocked %.3f s (staging %.3f s, "
          "waiting for the previous write %.3f s)",
          path, o.state_dict_type, last_save_seconds, Now() - t0, waited));
      return absl::OkStatus();
    }
    FABRIC_RETURN_IF_ERROR(engine->Save(path, values));
    FABRIC_RETURN_IF_ERROR(fabric.Barrier());  // committed on every rank
    last_save_seconds = Now() - t0;
    total_save_seconds += last_save_seconds;
    ++saves;
    last_checkpoint = path;
    FABRIC_ASSIGN_OR_RETURN(std::string removed_note, prune());
    fabric.Print(absl::StrFormat("saved %s (%s, %s) in %.2f s%s", path, o.state_dict_type,
                                 strategies::HumanBytes(PathBytes(path)), last_save_seconds,
                                 removed_note));
    return absl::OkStatus();
  };

  // --- Train.
  const int64_t first_step = step;
  double timed_seconds = 0;
  int64_t timed_steps = 0, timed_tokens = 0;
  try {
    while (step < o.steps) {
      const double t0 = Now();
      LmBatch batch = loader.Next();
      at::Tensor inputs = batch.inputs.to(device), target = batch.target.to(device);
      engine->optimizer().zero_grad();
      at::Tensor loss = engine->ForwardLoss(inputs, target);
      FABRIC_RETURN_IF_ERROR(engine->Backward(loss));
      engine->optimizer().step();
      ++step;
      at::Tensor logged = loss.detach().to(at::kCPU, at::kDouble).reshape({1}).clone();
      if (context != nullptr && world > 1) {
        FABRIC_RETURN_IF_ERROR(context->AllReduce(logged, strategies::ReduceOp::kAvg));
      }
      const double seconds = Now() - t0;
      const int64_t tokens = inputs.numel() * world;
      if (step > first_step + 1 || o.steps - first_step == 1) {  // the first step warms up
        timed_seconds += seconds;
        timed_tokens += tokens;
        ++timed_steps;
      }
      const Memory mem = ReadMemory();
      MetricsRow row{step,        batch.epoch,  logged.item<double>(), tokens / seconds,
                     seconds,     mem.rss_mib,  mem.peak_mib};
      if (rank == 0) rows.push_back(row);
      if (!std::isfinite(row.loss)) {
        return absl::InternalError(absl::StrCat("step ", step, ": the loss is ", row.loss,
                                                " (try a smaller --lr)"));
      }
      if (step % o.log_every == 0 || step == o.steps) {
        fabric.Print(absl::StrFormat(
            "step %d/%d | epoch %d | loss %.4f | %.0f tok/s | %.3f s/step | rss %s (peak %s)", step,
            o.steps, batch.epoch, row.loss, row.tokens_per_sec, seconds, Gib(mem.rss_mib),
            Gib(mem.peak_mib)));
      }
      const bool interval_hit = o.checkpoint_interval > 0 && step % o.checkpoint_interval == 0;
      if (interval_hit || (o.save_last && step == o.steps)) {
        if (rank == 0) FABRIC_RETURN_IF_ERROR(WriteMetrics(metrics_path, rows));
        FABRIC_RETURN_IF_ERROR(save(step));
      }
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(o.name, " rank ", rank, " at step ", step + 1, ": ",
                                            ErrorText(e)));
  }

  FABRIC_RETURN_IF_ERROR(finish_async());

  // --- Reload (benchmarks).
  double load_seconds = -1;
  if (o.time_load && !last_checkpoint.empty()) {
    Dict values = CheckpointValues();
    const double t0 = Now();
    FABRIC_RETURN_IF_ERROR(engine->Load(last_checkpoint, values));
    FABRIC_RETURN_IF_ERROR(fabric.Barrier());
    load_seconds = Now() - t0;
  }

  // --- Summary.
  const Memory mem = ReadMemory();
  at::Tensor peak = at::full({1}, mem.peak_mib, at::kDouble);
  std::vector<double> peaks{mem.peak_mib};
  if (context != nullptr && world > 1) {
    FABRIC_ASSIGN_OR_RETURN(const std::vector<at::Tensor> all, context->AllGather(peak));
    peaks.clear();
    for (const at::Tensor& t : all) peaks.push_back(t.item<double>());
  }
  if (rank == 0) {
    FABRIC_RETURN_IF_ERROR(WriteMetrics(metrics_path, rows));
    std::vector<double> xs, ys;
    for (const MetricsRow& r : rows) {
      xs.push_back(static_cast<double>(r.step));
      ys.push_back(r.loss);
    }
    if (!rows.empty()) FABRIC_RETURN_IF_ERROR(WriteLineChartPng(png_path, xs, ys));
  }
  std::string peak_text;
  for (size_t r = 0; r < peaks.size(); ++r) {
    absl::StrAppend(&peak_text, r ? ", " : "", "rank ", r, " ", Gib(peaks[r]));
  }
  if (timed_steps > 0) {
    fabric.Print(absl::StrFormat(
        "summary: %d steps (%d timed) | %.3f s/step | %.3f steps/s | %.0f tok/s | peak rss: %s",
        step - first_step, timed_steps, timed_seconds / timed_steps, timed_steps / timed_seconds,
        timed_tokens / timed_seconds, peak_text));
  } else {
    fabric.Print(absl::StrCat("summary: no step run (already at step ", step, " of ", o.steps,
                              ") | peak rss: ", peak_text));
  }
  const std::string refused_note =
      refused_async > 0
          ? absl::StrCat(" | ", refused_async, " save(s) synchronous: the staged copy did not fit")
          : std::string();
  if (saves > 0 && async_saves > 0) {
    fabric.Print(absl::StrFormat(
        "checkpoint: %s | %s | async: training blocked %.3f s last, %.3f s in all (%d saves); "
        "background writes %.2f s last, %.2f s in all%s",
        last_checkpoint, strategies::HumanBytes(PathBytes(last_checkpoint)), last_save_seconds,
        total_save_seconds, saves, last_write_seconds, total_write_seconds, refused_note));
  } else if (saves > 0) {
    fabric.Print(absl::StrFormat("checkpoint: %s | %s | last save %.2f s (%d saves, %.2f s)%s",
                                 last_checkpoint, strategies::HumanBytes(PathBytes(last_checkpoint)),
                                 last_save_seconds, saves, total_save_seconds, refused_note));
  }
  if (load_seconds >= 0) {
    fabric.Print(absl::StrFormat("load: %s in %.2f s", last_checkpoint, load_seconds));
  }
  if (rank == 0 && !rows.empty()) {
    fabric.Print(absl::StrCat("metrics: ", metrics_path, " | loss curve: ", png_path));
  }
  return fabric.Finish();
}

}  // namespace fabric::trainers
