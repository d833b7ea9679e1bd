// FSDP checkpoints between real processes (Gloo, 1-4 ranks): sharded (DCP)
// and full (torch.save) checkpoints saved on N ranks load on M ranks for
// every N, M in {1, 2, 3, 4} (and into a plain module in one process) with
// bit-exact parameters and optimizer state and identical continued
// training; an interrupted save leaves the earlier checkpoint loadable and
// its own folder refused; damaged folders give errors naming file and key.

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/optimizer_state.h"
#include "checkpoint/state.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "strategies/cluster_environment.h"
#include "strategies/fsdp.h"
#include "strategies/fsdp_checkpoint.h"
#include "strategies/process_group.h"
#include "tests/fsdp/fsdp_test_util.h"
#include "tests/distributed/rank_main.h"

namespace fabric::testing {
namespace {

namespace fs = std::filesystem;
using strategies::DistributedContext;
using strategies::FsdpCheckpointOptions;
using strategies::FsdpOptions;
using strategies::WrapperLookup;
using strategies::FullyShardedDataParallel;
using strategies::StateDictType;

#define CHECK_OK(expr)                             \
  do {                                             \
    absl::Status check_status_ = (expr);           \
    if (!check_status_.ok()) return check_status_; \
  } while (false)

#define ASSIGN_OR_RETURN_STATUS(lhs, expr) \
  auto lhs##_or = (expr);                  \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  auto& lhs = *lhs##_or

absl::Status Check(bool ok, const std::string& what) {
  return ok ? absl::OkStatus() : absl::InternalError(what);
}

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::string(v) : fallback;
}
std::string TempPath(const std::string& name) {
  return absl::StrCat(Env("TEST_TMPDIR", "/tmp"), "/", name);
}

std::string Dir() { return Env("FSDP_TEST_DIR", TempPath("fsdp_ckpt")); }
std::string Sharded(int n) { return ShardedPath(Dir(), n); }
std::string Full(int n) { return FullPath(Dir(), n); }
std::string Ref(int n) { return RefPath(Dir(), n); }
std::string Cont(int n) { return ContPath(Dir(), n); }

std::unique_ptr<FullyShardedDataParallel> Wrap(std::shared_ptr<Net> net,
                                               std::shared_ptr<DistributedContext> ctx,
                                               absl::Status* status) {
  return WrapBlocks(std::move(net), std::move(ctx), status);
}

absl::Status SavePhase(const strategies::ClusterEnvironment& c) {
  return SaveReferenceRun(c, Dir());
}

absl::Status ExpectBits(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  if (got.sizes() != want.sizes() || got.scalar_type() != want.scalar_type() ||
      !at::equal(got, want)) {
    std::ostringstream msg;
    msg << what << ": not bit-identical (shapes " << got.sizes() << " vs " << want.sizes() << ")";
    return absl::InternalError(msg.str());
  }
  return absl::OkStatus();
}

// A value entry of `state`, or null.
const Value* FindValue(const State& state, const std::string& key) {
  const StateEntry* e = state.Find(key);
  return e != nullptr && e->is_value() ? &e->value() : nullptr;
}

// Checks the loaded state against the reference of the N-rank save.
absl::Status CheckLoaded(const State& state, const Dict& remaining,
                         const torch::optim::Optimizer& opt, const Dict& ref,
                         FullyShardedDataParallel* fsdp, Net* plain, const std::string& what) {
  CHECK_OK(Check(remaining.empty(), what + "unexpected remaining metadata"));
  const Value* step = FindValue(state, "step");
  CHECK_OK(Check(step != nullptr && step->is_int() && step->as_int() == kSavedSteps,
                 what + "step not restored"));
  const Value* extra = FindValue(state, "extra");
  CHECK_OK(Check(extra != nullptr && extra->is_dict() &&
                     *extra->as_dict().Find("note") == Value("hello") &&
                     at::equal(extra->as_dict().Find("t")->as_tensor(), at::arange(3).to(at::kFloat)),
                 what + "extra not restored: " + (extra ? extra->DebugString() : "null")));
  CHECK_OK(Check(opt.param_groups()[0].options().get_lr() == kLr, what + "lr not restored"));
  if (fsdp != nullptr) {
    const auto& params = fsdp->params();
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& p = params[i];
      CHECK_OK(ExpectBits(p.shard.detach(), p.LocalRows(ref.Find("p." + p.fqn)->as_tensor()),
                          what + p.fqn));
      ASSIGN_OR_RETURN_STATUS(st, ParamState(opt, static_cast<int>(i)));
      for (const char* name : {"exp_avg", "exp_avg_sq"}) {
        CHECK_OK(ExpectBits(st.Find(name)->as_tensor(),
                            p.LocalRows(ref.Find(absl::StrCat(name, ".", p.fqn))->as_tensor()),
                            absl::StrCat(what, name, ".", p.fqn)));
      }
      CHECK_OK(ExpectBits(st.Find("step")->as_tensor(), ref.Find("step." + p.fqn)->as_tensor(),
                          what + "step." + p.fqn));
    }
  } else {
    int i = 0;
    for (const auto& item : plain->named_parameters()) {
      CHECK_OK(ExpectBits(item.value().detach(), ref.Find("p." + item.key())->as_tensor(),
                          what + item.key()));
      ASSIGN_OR_RETURN_STATUS(st, ParamState(opt, i++));
      for (const char* name : {"exp_avg", "exp_avg_sq"}) {
        CHECK_OK(ExpectBits(st.Find(name)->as_tensor(),
                            ref.Find(absl::StrCat(name, ".", item.key()))->as_tensor(),
                            absl::StrCat(what, name, ".", item.key())));
      }
    }
  }
  return absl::OkStatus();
}

// Loads every N-rank checkpoint on this world (M ranks), sharded and full,
// checks it bit for bit and continues training.
absl::Status LoadPhase(const strategies::ClusterEnvironment& c) {
  ASSIGN_OR_RETURN_STATUS(ctx, MakeContext(c));
  const int rank = ctx->rank(), world = ctx->world_size();
  for (int n = 1; n <= 4; ++n) {
    ASSIGN_OR_RETURN_STATUS(ref_v, TorchLoad(Ref(n)));
    ASSIGN_OR_RETURN_STATUS(cont_v, TorchLoad(Cont(n)));
    const Dict& ref = ref_v.as_dict();
    std::map<std::string, at::Tensor> continued[2];
    for (int kind = 0; kind < 2; ++kind) {
      const std::string path = kind == 0 ? Sharded(n) : Full(n);
      const std::string what = absl::StrCat("[saved on ", n, ", loaded on ", world, ", ",
                                            kind == 0 ? "sharded" : "full", "] ");
      std::shared_ptr<Net> net = MakeNet(55);  // other weights than the saved ones
      absl::Status s;
      auto fsdp = Wrap(net, ctx, &s);
      CHECK_OK(s);
      auto opt_ptr = std::make_shared<torch::optim::AdamW>(
          fsdp->parameters(), torch::optim::AdamWOptions(0.5));
      torch::optim::AdamW& opt = *opt_ptr;
      State state{{"model", fsdp->module_ptr()},
                  {"optimizer", opt_ptr},
                  {"step", 0},
                  {"extra", Value()}};
      absl::StatusOr<Dict> remaining = strategies::FsdpLoadCheckpoint(path, state, WrapperLookup({fsdp.get()}));
      if (!remaining.ok()) return absl::InternalError(what + remaining.status().ToString());
      CHECK_OK(CheckLoaded(state, *remaining, opt, ref, fsdp.get(), nullptr, what));
      for (int step = kSavedSteps; step < kSavedSteps + kMoreSteps; ++step) {
        CHECK_OK(TrainStep(*net, fsdp.get(), opt, step, rank, world));
      }
      ASSIGN_OR_RETURN_STATUS(full, FullParams(*net, fsdp.get()));
      continued[kind] = full;
      // Reloading into the live optimizer reads into its buffers: no second
      // copy of the optimizer state while the old one is still held.
      std::vector<const void*> buffers;
      for (size_t i = 0; i < fsdp->params().size(); ++i) {
        ASSIGN_OR_RETURN_STATUS(st, ParamState(opt, static_cast<int>(i)));
        buffers.push_back(st.Find("exp_avg")->as_tensor().data_ptr());
        buffers.push_back(st.Find("exp_avg_sq")->as_tensor().data_ptr());
      }
      remaining = strategies::FsdpLoadCheckpoint(path, state, WrapperLookup({fsdp.get()}));
      if (!remaining.ok()) return absl::InternalError(what + remaining.status().ToString());
      CHECK_OK(CheckLoaded(state, *remaining, opt, ref, fsdp.get(), nullptr, what + "reload "));
      for (size_t i = 0; i < fsdp->params().size(); ++i) {
        ASSIGN_OR_RETURN_STATUS(st, ParamState(opt, static_cast<int>(i)));
        CHECK_OK(Check(st.Find("exp_avg")->as_tensor().data_ptr() == buffers[2 * i] &&
                           st.Find("exp_avg_sq")->as_tensor().data_ptr() == buffers[2 * i + 1],
                       what + "reload allocated new optimizer buffers for " +
                           fsdp->params()[i].fqn));
      }
      for (const auto& [name, t] : full) {
        const at::Tensor& want = cont_v.as_dict().Find(name)->as_tensor();
        if (world == n) {
          // Same world: resuming is invisible, bit for bit.
          CHECK_OK(ExpectBits(t, want, what + "continued " + name));
        } else {
          // Another world size reduces gradients in another order (rounding).
          CHECK_OK(ExpectClose(t, want, 1e-4, 1e-5, what + "continued " + name));
        }
      }
    }
    for (const auto& [name, t] : continued[0]) {
      CHECK_OK(ExpectBits(t, continued[1].at(name),
                          absl::StrCat("[saved on ", n, ", loaded on ", world,
                                       "] sharded vs full continuation of ", name)));
    }
    if (world == 1) {
      // One process, no FSDP: a plain module and optimizer.
      for (int kind = 0; kind < 2; ++kind) {
        const std::string what = absl::StrCat("[saved on ", n, ", plain module, ",
                                              kind == 0 ? "sharded" : "full", "] ");
        std::shared_ptr<Net> net = MakeNet(56);
        auto opt_ptr = std::make_shared<torch::optim::AdamW>(
            net->parameters(), torch::optim::AdamWOptions(0.5));
        torch::optim::AdamW& opt = *opt_ptr;
        State state{{"model", net}, {"optimizer", opt_ptr}, {"step", 0}, {"extra", Value()}};
        absl::StatusOr<Dict> remaining =
            strategies::FsdpLoadCheckpoint(kind == 0 ? Sharded(n) : Full(n), state, nullptr);
        if (!remaining.ok()) return absl::InternalError(what + remaining.status().ToString());
        CHECK_OK(CheckLoaded(state, *remaining, opt, ref, nullptr, net.get(), what));
        for (int step = kSavedSteps; step < kSavedSteps + kMoreSteps; ++step) {
          CHECK_OK(TrainStep(*net, nullptr, opt, step, 0, 1));
        }
        ASSIGN_OR_RETURN_STATUS(full, FullParams(*net, nullptr));
        for (const auto& [name, t] : full) {
          // FSDP on one rank is plain training bit for bit.
          CHECK_OK(ExpectBits(t, continued[0].at(name), what + "continued " + name));
        }
      }
    }
  }
  return ctx->Barrier();
}

// Saves A, then A again over the same path with rank 1 killed before the
// commit: the old A stays complete and loadable.
absl::Status InterruptPhase(const strategies::ClusterEnvironment& c) {
  ASSIGN_OR_RETURN_STATUS(ctx, MakeContext(c, /*timeout_s=*/20));
  const int rank = ctx->rank(), world = ctx->world_size();
  std::shared_ptr<Net> net = MakeNet(9);
  absl::Status s;
  auto fsdp = Wrap(net, ctx, &s);
  CHECK_OK(s);
  auto opt_ptr = std::make_shared<torch::optim::AdamW>(
      fsdp->parameters(), torch::optim::AdamWOptions(kLr));
  torch::optim::AdamW& opt = *opt_ptr;
  CHECK_OK(TrainStep(*net, fsdp.get(), opt, 0, rank, world));
  State state{{"model", fsdp->module_ptr()}, {"optimizer", opt_ptr}, {"step", 1}};
  const std::string a = Dir() + "/interrupt_a";
  CHECK_OK(strategies::FsdpSaveCheckpoint(a, state, WrapperLookup({fsdp.get()}), ctx.get()));
  CHECK_OK(TrainStep(*net, fsdp.get(), opt, 1, rank, world));
  State next{{"model", fsdp->module_ptr()}, {"optimizer", opt_ptr}, {"step", 2}};
  FsdpCheckpointOptions options;
  options.before_commit = [rank, &a] {
    if (rank == 1) _exit(7);  // dies after writing its shard, before the commit
    // Every shard of the new save is written: the old one is still whole.
    if (!fs::exists(a + "/.metadata") || !fs::exists(a + "/__1_0.distcp")) _exit(8);
  };
  absl::Status saved =
      strategies::FsdpSaveCheckpoint(a, next, WrapperLookup({fsdp.get()}), ctx.get(), options);
  CHECK_OK(Check(!saved.ok(), "the save with a killed rank reported success"));
  std::cerr << "interrupted save failed as expected: " << saved << "\n";
  CHECK_OK(Check(fs::exists(a + "/.metadata"), "the failed save over A removed A's .metadata"));
  // What it wrote beside A (a hidden temp folder) is gone.
  for (const fs::directory_entry& e : fs::directory_iterator(Dir())) {
    const std::string name = e.path().filename().string();
    CHECK_OK(Check(name == "interrupt_a", "leftover of the failed save: " + name));
  }

  // A loads with its old contents (here into a plain module: the process
  // group died with rank 1).
  std::shared_ptr<Net> plain = MakeNet(10);
  auto popt_ptr = std::make_shared<torch::optim::AdamW>(
      plain->parameters(), torch::optim::AdamWOptions(0.5));
  State load{{"model", plain}, {"optimizer", popt_ptr}, {"step", 0}};
  absl::StatusOr<Dict> loaded = strategies::FsdpLoadCheckpoint(a, load, nullptr);
  CHECK_OK(loaded.status());
  CHECK_OK(Check(FindValue(load, "step")->as_int() == 1, "step of the earlier checkpoint"));
  return absl::OkStatus();
}

std::string RunCase() { return Env("FSDP_TEST_CASE", ""); }

absl::Status Dispatch(const strategies::ClusterEnvironment& c) {
  const std::string which = RunCase();
  if (which == "save") return SavePhase(c);
  if (which == "load") return LoadPhase(c);
  if (which == "interrupt") return InterruptPhase(c);
  return absl::InvalidArgumentError("unknown FSDP_TEST_CASE " + which);
}

TEST(FsdpCheckpoint, SaveOnNLoadOnMForAllNAndM) {
  const std::string dir = TempPath("fsdp_ckpt");
  fs::create_directories(dir);
  setenv("FSDP_TEST_DIR", dir.c_str(), 1);
  for (int n = 1; n <= 4; ++n) {
    setenv("FSDP_TEST_CASE", "save", 1);
    absl::Status s = RunRanks(n, {{"FSDP_TEST_CASE", "save"}, {"FSDP_TEST_DIR", dir}}, Dispatch);
    ASSERT_TRUE(s.ok()) << "save on " << n << ": " << s;
  }
  // Each rank saved its own dim-0 row block: block0.fc1.weight (19 rows) on 4
  // ranks is 4 chunks of 5, 5, 5 and 4 rows, each in its rank's file; its
  // exp_avg is sharded the same way.
  {
    auto reader = dcp::CheckpointReader::Open(Sharded(4));
    ASSERT_TRUE(reader.ok()) << reader.status();
    for (const char* key : {"model.block0.fc1.weight", "optimizer.state.block0.fc1.weight.exp_avg"}) {
      const dcp::TensorStorageMetadata* md = (*reader)->FindTensor(key);
      ASSERT_NE(md, nullptr) << key;
      ASSERT_EQ(md->chunks.size(), 4u) << key;
      for (int r = 0; r < 4; ++r) {
        EXPECT_EQ(md->chunks[r].offsets, std::vector<int64_t>({5 * r, 0})) << key;
        EXPECT_EQ(md->chunks[r].sizes, std::vector<int64_t>({r < 3 ? 5 : 4, kWidth})) << key;
        const dcp::StorageInfo* info =
            (*reader)->metadata().FindStorage(dcp::MetadataIndex{key, md->chunks[r].offsets, {}});
        ASSERT_NE(info, nullptr);
        EXPECT_EQ(info->relative_path, absl::StrCat("__", r, "_0.distcp"));
      }
    }
  }
  EXPECT_TRUE(fs::exists(Sharded(2) + "/meta.pt"));
  EXPECT_TRUE(fs::exists(Sharded(2) + "/.metadata"));
  for (int m = 1; m <= 4; ++m) {
    setenv("FSDP_TEST_CASE", "load", 1);
    absl::Status s = RunRanks(m, {{"FSDP_TEST_CASE", "load"}, {"FSDP_TEST_DIR", dir}}, Dispatch);
    EXPECT_TRUE(s.ok()) << "load on " << m << ": " << s;
  }
  // A smaller save into a folder of a larger one removes the stale files.
  fs::remove_all(dir + "/shrink");
  fs::copy(Sharded(4), dir + "/shrink");
  setenv("FSDP_TEST_DIR", dir.c_str(), 1);
  {
    auto ctx = SingleContext();
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    std::shared_ptr<Net> net = MakeNet(1);
    absl::Status s;
    auto fsdp = Wrap(net, *ctx, &s);
    ASSERT_TRUE(s.ok()) << s;
    State state{{"model", fsdp->module_ptr()}};
    ASSERT_TRUE(strategies::FsdpSaveCheckpoint(dir + "/shrink", state, WrapperLookup({fsdp.get()}), ctx->get()).ok());
    EXPECT_TRUE(fs::exists(dir + "/shrink/__0_0.distcp"));
    EXPECT_FALSE(fs::exists(dir + "/shrink/__1_0.distcp"));
    EXPECT_FALSE(fs::exists(dir + "/shrink/__3_0.distcp"));
  }
}

TEST(FsdpCheckpoint, InterruptedSaveLeavesEarlierCheckpointLoadable) {
  const std::string dir = TempPath("fsdp_interrupt");
  fs::create_directories(dir);
  setenv("FSDP_TEST_DIR", dir.c_str(), 1);
  setenv("FSDP_TEST_CASE", "interrupt", 1);
  absl::Status children;
  absl::Status s = RunRanks(2, {{"FSDP_TEST_CASE", "interrupt"}, {"FSDP_TEST_DIR", dir}}, Dispatch,
                            &children);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_FALSE(children.ok());
  EXPECT_NE(std::string(children.message()).find("7"), std::string::npos) << children;
}

// Damaged folders (single process).
TEST(FsdpCheckpoint, DamagedFoldersGiveErrorsNamingFileAndKey) {
  const std::string dir = TempPath("fsdp_damaged");
  fs::remove_all(dir);
  fs::create_directories(dir);
  setenv("FSDP_TEST_DIR", dir.c_str(), 1);
  absl::Status saved = RunRanks(2, {{"FSDP_TEST_CASE", "save"}, {"FSDP_TEST_DIR", dir}},
                                [](const strategies::ClusterEnvironment& c) { return SavePhase(c); });
  ASSERT_TRUE(saved.ok()) << saved;
  const std::string good = Sharded(2);

  auto load_into_plain = [&](const std::string& path, bool strict, const std::shared_ptr<Net>& net) {
    auto opt_ptr = std::make_shared<torch::optim::AdamW>(
        net->parameters(), torch::optim::AdamWOptions(0.5));
    State state{{"model", net}, {"optimizer", opt_ptr}, {"step", 0}, {"extra", Value()}};
    FsdpCheckpointOptions options;
    options.strict = strict;
    return strategies::FsdpLoadCheckpoint(path, state, nullptr, options).status();
  };
  auto copy = [&](const std::string& name) {
    const std::string to = dir + "/" + name;
    fs::remove_all(to);
    fs::copy(good, to);
    return to;
  };

  {  // A missing rank file.
    const std::string d = copy("missing");
    fs::remove(d + "/__1_0.distcp");
    absl::Status s = load_into_plain(d, true, MakeNet(1));
    EXPECT_FALSE(s.ok());
    EXPECT_NE(std::string(s.message()).find("__1_0.distcp"), std::string::npos) << s;
    const std::string m(s.message());
    EXPECT_TRUE(m.find("model.") != std::string::npos || m.find("optimizer.") != std::string::npos)
        << s;
  }
  {  // A truncated rank file.
    const std::string d = copy("truncated");
    const auto size = fs::file_size(d + "/__1_0.distcp");
    fs::resize_file(d + "/__1_0.distcp", size / 2);
    absl::Status s = load_into_plain(d, true, MakeNet(1));
    EXPECT_FALSE(s.ok());
    EXPECT_NE(std::string(s.message()).find("__1_0.distcp"), std::string::npos) << s;
  }
  {  // No .metadata: an incomplete checkpoint.
    const std::string d = copy("incomplete");
    fs::remove(d + "/.metadata");
    absl::Status s = load_into_plain(d, true, MakeNet(1));
    EXPECT_NE(std::string(s.message()).find("incomplete"), std::string::npos) << s;
  }
  {  // A model with other parameters: every missing and unexpected key listed.
    std::shared_ptr<Net> two = std::make_shared<Net>(2);
    State state{{"model", two}, {"step", 0}, {"extra", Value()}, {"absent", 1}};
    absl::StatusOr<Dict> r = strategies::FsdpLoadCheckpoint(good, state, nullptr);
    ASSERT_FALSE(r.ok());
    const std::string m(r.status().message());
    for (const char* key : {"model.block2.fc1.weight", "model.block2.fc2.bias", "absent"}) {
      EXPECT_NE(m.find(key), std::string::npos) << key << " not in: " << m;
    }
    // Non-strict: loads what matches, reports nothing fatal.
    FsdpCheckpointOptions lenient;
    lenient.strict = false;
    State state2{{"model", two}, {"step", 0}};
    absl::StatusOr<Dict> ok = strategies::FsdpLoadCheckpoint(good, state2, nullptr, lenient);
    EXPECT_TRUE(ok.ok()) << ok.status();
    EXPECT_EQ(FindValue(state2, "step")->as_int(), kSavedSteps);
    EXPECT_TRUE(ok->Contains("extra"));  // not asked for: returned
  }
  {  // A parameter of another shape.
    struct Odd : torch::nn::Module {
      Odd() { inp = register_module("inp", torch::nn::Linear(kIn + 1, kWidth)); }
      torch::nn::Linear inp{nullptr};
    };
    auto odd = std::make_shared<Odd>();
    State state{{"model", odd}};
    FsdpCheckpointOptions lenient;
    lenient.strict = false;
    absl::StatusOr<Dict> r = strategies::FsdpLoadCheckpoint(good, state, nullptr, lenient);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(std::string(r.status().message()).find("model.inp.weight: shape [9,6]"),
              std::string::npos)
        << r.status();
  }
  {  // Full checkpoints: a truncated file.
    const std::string f = dir + "/truncated.pt";
    fs::copy_file(Full(2), f, fs::copy_options::overwrite_existing);
    fs::resize_file(f, fs::file_size(f) - 100);
    absl::Status s = load_into_plain(f, true, MakeNet(1));
    EXPECT_FALSE(s.ok());
    EXPECT_NE(std::string(s.message()).find("truncated.pt"), std::string::npos) << s;
  }
}

}  // namespace

}  // namespace fabric::testing

int main(int argc, char** argv) {
  return fabric::testing::MultiProcessTestMain(argc, argv, fabric::testing::Dispatch);
}
