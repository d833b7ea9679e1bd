// //trainers:load: "train on several devices, load on one". Loads a
// checkpoint written by any of the trainers (a sharded FSDP folder or a
// single torch.save file, from any number of ranks) into a plain Transformer
// in this one process, and evaluates it on a WikiText-2 split.
//
//   bazel run //trainers:fsdp_train -- --steps=50          # 2 ranks, sharded
//   bazel run //trainers:load -- --checkpoint=runs/fsdp_train/checkpoints
#include <ATen/ATen.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "checkpoint/checkpoint_kind.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "fabric/fabric.h"
#include "trainers/checkpoints.h"
#include "trainers/trainer.h"
#include "trainers/transformer.h"
#include "trainers/wikitext2.h"

ABSL_FLAG(std::string, checkpoint, "runs/fsdp_train/checkpoints",
          "a checkpoint (file or sharded folder), or a folder of versioned checkpoints "
          "(the newest complete one is used)");
ABSL_FLAG(std::string, data_dir, "", "WikiText-2 folder (default as the trainers)");
ABSL_FLAG(std::string, split, "",
          "split to evaluate on (default: the one the checkpoint was trained on, so the "
          "vocabulary matches)");
ABSL_FLAG(int64_t, batch_size, 16, "samples per evaluation batch");
ABSL_FLAG(int64_t, eval_batches, 20, "batches to evaluate (0: the whole split)");

namespace {
namespace fs = std::filesystem;
using fabric::Dict;
using fabric::Value;

// The checkpoint's "hparams" entry, read without loading any tensor.
absl::StatusOr<Dict> ReadHparams(const std::string& path, bool sharded) {
  const std::string file =
      sharded ? fabric::LightningMetaPath(path) : path;
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<fabric::TorchFile> f, fabric::TorchFile::Open(file));
  const Value& root = f->root();
  const Value* h = root.is_dict() ? root.as_dict().Find("hparams") : nullptr;
  if (h == nullptr || !h->is_dict()) {
    return absl::NotFoundError(absl::StrCat(
        file, ": no 'hparams' dict (was it written by a //trainers trainer?)"));
  }
  return h->as_dict();
}

absl::StatusOr<int64_t> GetInt(const Dict& d, const char* key, const std::string& where) {
  const Value* v = d.Find(key);
  if (v == nullptr || !v->is_int()) {
    return absl::DataLossError(absl::StrCat(where, ": hparams.", key, " missing or not an int"));
  }
  return v->as_int();
}

// Loads and evaluates as the flags say; main() turns the status into the
// exit code.
absl::Status Run() {
  using fabric::trainers::ResolveUserPath;
  std::string path = ResolveUserPath(absl::GetFlag(FLAGS_checkpoint));
  if (!fs::exists(path)) return absl::NotFoundError(absl::StrCat("--checkpoint: ", path, " does not exist"));
  // A folder of versioned checkpoints: take the newest complete one.
  if (const fabric::CheckpointLayout layout = fabric::StatCheckpoint(path);
      layout.is_sharded() && !layout.complete) {
    FABRIC_ASSIGN_OR_RETURN(const std::optional<fabric::trainers::CheckpointEntry> latest,
                            fabric::trainers::LatestCheckpoint(path));
    if (!latest.has_value()) {
      return absl::NotFoundError(absl::StrCat(
          "--checkpoint: ", path, " is neither a checkpoint nor holds a complete step-*.ckpt"));
    }
    path = latest->path;
  }
  const bool sharded = fabric::StatCheckpoint(path).is_sharded();
  FABRIC_ASSIGN_OR_RETURN(const Dict hp, ReadHparams(path, sharded));

  fabric::trainers::TransformerConfig config;
  for (auto [key, field] : {std::pair<const char*, int64_t*>{"vocab_size", &config.vocab_size},
                            {"ninp", &config.ninp},
                            {"nhead", &config.nhead},
                            {"nhid", &config.nhid},
                            {"nlayers", &config.nlayers}}) {
    FABRIC_ASSIGN_OR_RETURN(*field, GetInt(hp, key, path));
  }
  if (const Value* d = hp.Find("dropout"); d != nullptr && (d->is_float() || d->is_int())) {
    config.dropout = d->as_float();
  }
  if (absl::Status s = fabric::trainers::ValidateTransformerConfig(config); !s.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": hparams: ", s.message()));
  }
  FABRIC_ASSIGN_OR_RETURN(const int64_t block_size, GetInt(hp, "block_size", path));
  std::string split = absl::GetFlag(FLAGS_split);
  if (split.empty()) {
    const Value* s = hp.Find("split");
    split = s != nullptr && s->is_string() ? s->as_string() : "train";
  }

  // The model, loaded on one device from whatever world size saved it.
  auto model = std::make_shared<fabric::trainers::Transformer>(config);
  const double t0 = [] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }();
  {
    // A single-device Fabric loads both kinds (a sharded folder chunk by chunk).
    fabric::FabricOptions fo;
    fo.accelerator = "cpu";
    FABRIC_ASSIGN_OR_RETURN(auto f, fabric::Fabric::Create(fo));
    fabric::State state{
        {"model", std::static_pointer_cast<torch::nn::Module>(model)}};
    FABRIC_RETURN_IF_ERROR(f->Load(path, state, /*strict=*/true).status());
  }
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count() -
      t0;
  std::printf("loaded %s (%s, saved on %s rank(s), preset %s) into one process in %.2f s\n",
              path.c_str(), sharded ? "sharded" : "full",
              hp.Find("world_size") ? hp.Find("world_size")->DebugString().c_str() : "?",
              hp.Find("preset") ? hp.Find("preset")->DebugString().c_str() : "?", load_seconds);

  // Evaluation: the split in order, dropout off.
  std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  data_dir = data_dir.empty() ? fabric::trainers::DefaultDataDir() : ResolveUserPath(data_dir);
  FABRIC_ASSIGN_OR_RETURN(const fabric::trainers::WikiText2Split which,
                          fabric::trainers::ParseWikiText2Split(split));
  FABRIC_ASSIGN_OR_RETURN(const fabric::trainers::WikiText2 data,
                          fabric::trainers::WikiText2::Load(data_dir, which, block_size));
  if (data.vocab_size() != config.vocab_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " was trained with a vocabulary of ", config.vocab_size, " words, but ",
        data.path(), " has ", data.vocab_size(),
        ": evaluate on the split it was trained on (--split)"));
  }
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t batch = std::max<int64_t>(1, absl::GetFlag(FLAGS_batch_size));
  int64_t batches = (data.size() + batch - 1) / batch;
  if (absl::GetFlag(FLAGS_eval_batches) > 0) batches = std::min(batches, absl::GetFlag(FLAGS_eval_batches));
  double loss_sum = 0;
  int64_t tokens = 0;
  for (int64_t b = 0; b < batches; ++b) {
    std::vector<at::Tensor> in, tg;
    for (int64_t i = b * batch; i < std::min(data.size(), (b + 1) * batch); ++i) {
      fabric::trainers::LmSample s = data.Get(i);
      in.push_back(s.inputs);
      tg.push_back(s.target);
    }
    at::Tensor inputs = at::stack(in), target = at::stack(tg);
    at::Tensor loss = fabric::trainers::TransformerLoss(model->forward(inputs, target), target);
    loss_sum += loss.item<double>() * static_cast<double>(target.numel());
    tokens += target.numel();
  }
  const double mean = loss_sum / static_cast<double>(std::max<int64_t>(tokens, 1));
  std::printf("eval on %s (%s): %lld tokens\n", split.c_str(), data.path().c_str(),
              static_cast<long long>(tokens));
  std::printf("eval_loss %.9g perplexity %.3f\n", mean, std::exp(mean));
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Loads a //trainers checkpoint (from any number of ranks) on one device and evaluates it.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::StrContains(path, "load_main");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  if (absl::Status s = Run(); !s.ok()) {
    std::fprintf(stderr, "load: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
