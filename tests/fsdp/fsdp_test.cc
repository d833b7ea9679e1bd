// FSDP training between real processes (Gloo, 2 and 3 ranks): sharded
// training matches single-process training on the same global batch, for
// both sharding strategies, with gradient accumulation (NoSync) and in
// bf16-mixed precision; shards really are 1/N and the full parameters are
// freed outside their unit's forward/backward. The test process is rank 0;
// the Launcher re-executes this binary for the others.

#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/optimizer_state.h"
#include "strategies/cluster_environment.h"
#include "strategies/fsdp.h"
#include "strategies/fsdp_optimizer_state.h"
#include "strategies/process_group.h"
#include "tests/fsdp/fsdp_test_util.h"
#include "tests/distributed/rank_main.h"

namespace fabric::testing {
namespace {

using strategies::DistributedContext;
using strategies::FsdpOptions;
using strategies::FsdpPrecision;
using strategies::FullyShardedDataParallel;
using strategies::ShardingStrategy;

#define CHECK_OK(expr)                             \
  do {                                             \
    absl::Status check_status_ = (expr);           \
    if (!check_status_.ok()) return check_status_; \
  } while (false)

absl::Status Check(bool ok, const std::string& what) {
  return ok ? absl::OkStatus() : absl::InternalError(what);
}

constexpr int kSteps = 4;

// One optimizer step of `micro` micro-batches (all but the last under
// NoSync with FSDP).
absl::Status Step(Net& net, FullyShardedDataParallel* fsdp, torch::optim::Optimizer& opt,
                  int step, int micro, int rank, int world) {
  if (micro == 1) return TrainStep(net, fsdp, opt, step, rank, world);
  opt.zero_grad();
  for (int m = 0; m < micro; ++m) {
    at::Tensor x, y;
    Batch(step * micro + m, fsdp != nullptr ? rank : 0, fsdp != nullptr ? world : 1, &x, &y);
    try {
      if (fsdp != nullptr && m + 1 < micro) {
        auto no_sync = fsdp->NoSync();
        at::Tensor out = fsdp->Forward([&] { return net.forward(x, fsdp); });
        (out - y).pow(2).mean().backward();
      } else {
        at::Tensor out = fsdp != nullptr ? fsdp->Forward([&] { return net.forward(x, fsdp); })
                                         : net.forward(x);
        (out - y).pow(2).mean().backward();
      }
    } catch (const std::exception& e) {
      return absl::InternalError(e.what());
    }
  }
  opt.step();
  return absl::OkStatus();
}

struct Case {
  ShardingStrategy strategy = ShardingStrategy::kFullShard;
  FsdpPrecision precision = FsdpPrecision::k32True;
  int micro = 1;
  bool call_units = true;  // run the blocks through fsdp->Call
};

// The optimizer's state in FSDP's three forms. Full matches the optimizer of
// single-process training by parameter name; sharded is this rank's rows of
// full; local is the optimizer's own. Each form, loaded into a new optimizer
// over the same shards, gives back the same state bit for bit.
absl::Status CheckOptimizerForms(FullyShardedDataParallel& fsdp, torch::optim::Optimizer& opt,
                                 Net& ref, const torch::optim::Optimizer& ref_opt,
                                 const std::function<std::unique_ptr<torch::optim::Optimizer>()>&
                                     make_opt,
                                 bool bf16, const std::string& what) {
  using strategies::OptimStateForm;
  FABRIC_ASSIGN_OR_RETURN(Dict full, strategies::FsdpOptimizerStateDict(fsdp, opt, OptimStateForm::kFull));
  FABRIC_ASSIGN_OR_RETURN(Dict sharded,
                          strategies::FsdpOptimizerStateDict(fsdp, opt, OptimStateForm::kSharded));
  FABRIC_ASSIGN_OR_RETURN(Dict local, strategies::FsdpOptimizerStateDict(fsdp, opt, OptimStateForm::kLocal));
  FABRIC_ASSIGN_OR_RETURN(Dict reference, OptimizerStateDict(ref_opt));
  std::vector<std::string> names;
  for (const auto& item : ref.named_parameters()) names.push_back(item.key());
  for (const auto& [id, entry] : reference.Find("state")->as_dict()) {
    const std::string& name = names.at(id.as_int());
    const Value* got = full.Find("state")->as_dict().Find(name);
    CHECK_OK(Check(got != nullptr, what + "full optimizer state lacks " + name));
    for (const auto& [k, v] : entry.as_dict()) {
      const std::string where = absl::StrCat(what, "full optimizer state ", name, ".", k.as_string());
      const at::Tensor& g = got->as_dict().Find(k)->as_tensor();
      if (bf16) {
        CHECK_OK(ExpectClose(g, v.as_tensor(), 0.05, 0.03, where));
      } else {
        CHECK_OK(ExpectClose(g, v.as_tensor(), 1e-4, 1e-5, where));
      }
    }
  }
  for (const auto& p : fsdp.params()) {
    const Value* f = full.Find("state")->as_dict().Find(p.fqn);
    const Value* sh = sharded.Find("state")->as_dict().Find(p.fqn);
    if (f == nullptr) continue;
    CHECK_OK(Check(sh != nullptr, what + "sharded optimizer state lacks " + p.fqn));
    for (const auto& [k, v] : f->as_dict()) {
      if (k.as_string() == "step") continue;
      CHECK_OK(Check(at::equal(sh->as_dict().Find(k)->as_tensor(),
                               p.LocalRows(v.as_tensor())),
                     what + "sharded state is not this rank's rows of the full one: " + p.fqn));
    }
  }
  const std::tuple<OptimStateForm, const Dict*, const char*> forms[] = {
      {OptimStateForm::kFull, &full, "full"},
      {OptimStateForm::kSharded, &sharded, "sharded"},
      {OptimStateForm::kLocal, &local, "local"}};
  for (const auto& [form, dict, form_name] : forms) {
    std::unique_ptr<torch::optim::Optimizer> fresh = make_opt();
    CHECK_OK(strategies::FsdpLoadOptimizerStateDict(fsdp, *fresh, *dict, form));
    FABRIC_ASSIGN_OR_RETURN(Dict again,
                            strategies::FsdpOptimizerStateDict(fsdp, *fresh, OptimStateForm::kSharded));
    CHECK_OK(Check(Value(again) == Value(sharded),
                   absl::StrCat(what, "the ", form_name,
                                " optimizer state does not load back unchanged")));
  }
  // A name the model does not have is an error naming it.
  Dict bad = sharded;
  bad.Find("state")->as_dict().Set("no.such.param", Value(Dict()));
  absl::Status s = strategies::FsdpLoadOptimizerStateDict(fsdp, *make_opt(), bad,
                                                         OptimStateForm::kSharded);
  CHECK_OK(Check(!s.ok() && s.message().find("no.such.param") != std::string::npos,
                 what + "unknown parameter name: " + s.ToString()));
  return absl::OkStatus();
}

absl::Status CheckTraining(const std::shared_ptr<DistributedContext>& ctx, const Case& c) {
  const int rank = ctx->rank(), world = ctx->world_size();
  const bool bf16 = c.precision == FsdpPrecision::kBf16Mixed;
  const std::string what =
      absl::StrCat("[world=", world, " strategy=",
                   c.strategy == ShardingStrategy::kFullShard ? "full_shard" : "shard_grad_op",
                   " precision=", bf16 ? "bf16-mixed" : "32-true", " micro=", c.micro, "] ");
  // Ranks start from different weights: FSDP must take rank 0's.
  std::shared_ptr<Net> net = MakeNet(100 + rank);
  std::shared_ptr<Net> ref = MakeNet(100);
  net->running.add_(rank);  // buffers too

  FsdpOptions options;
  options.wrap_policy = BlockPolicy();
  options.sharding_strategy = c.strategy;
  options.precision = c.precision;
  auto fsdp_or = FullyShardedDataParallel::Create(net, ctx, options);
  if (!fsdp_or.ok()) return fsdp_or.status();
  FullyShardedDataParallel& fsdp = **fsdp_or;

  CHECK_OK(Check(fsdp.unit_names() == std::vector<std::string>({"block0", "block1", "block2", ""}),
                 what + "units"));
  CHECK_OK(Check(at::equal(net->running, ref->running), what + "buffer not broadcast"));
  // Shards are the rank's rows only: sizes add up to the parameter across
  // ranks, and the unit's flat buffer holds ceil(rows / N) rows per parameter.
  int64_t total_local = 0, total_full = 0;
  std::vector<int64_t> unit_expect(fsdp.unit_names().size(), 0);
  for (const auto& p : fsdp.params()) {
    const int64_t c_rows = (p.rows + world - 1) / world;
    CHECK_OK(Check(p.rows_per_rank == c_rows, what + p.fqn + " rows_per_rank"));
    CHECK_OK(Check(p.shard.numel() == p.local_rows * p.row_numel, what + p.fqn + " shard numel"));
    CHECK_OK(Check(p.shard.is_leaf() && p.shard.scalar_type() == at::kFloat,
                   what + p.fqn + " shard must be an fp32 leaf"));
    at::Tensor rows = at::full({1}, p.local_rows, at::kLong);
    CHECK_OK(ctx->AllReduce(rows));
    CHECK_OK(Check(rows.item<int64_t>() == p.rows,
                   absl::StrCat(what, p.fqn, ": shard rows sum to ", rows.item<int64_t>())));
    unit_expect[p.unit] += c_rows * p.row_numel;
    total_local += p.shard.numel();
    int64_t n = 1;
    for (int64_t s : p.shape) n *= s;
    total_full += n;
  }
  for (size_t u = 0; u < unit_expect.size(); ++u) {
    CHECK_OK(Check(fsdp.unit_shard_numel(static_cast<int>(u)) == unit_expect[u],
                   what + "unit flat shard size"));
  }
  CHECK_OK(Check(total_local <= (total_full + world - 1) / world + 64,
                 absl::StrCat(what, "rank holds ", total_local, " of ", total_full, " elements")));
  auto freed = [&](const at::Tensor& t) { return t.storage().nbytes() == 0; };
  CHECK_OK(Check(freed(net->blocks[1]->fc1->weight) && freed(net->inp->weight),
                 what + "full parameters must be freed after setup"));

  std::unique_ptr<torch::optim::Optimizer> opt, ref_opt;
  if (bf16) {
    opt = std::make_unique<torch::optim::SGD>(fsdp.parameters(),
                                              torch::optim::SGDOptions(0.05).momentum(0.9));
    ref_opt = std::make_unique<torch::optim::SGD>(ref->parameters(),
                                                  torch::optim::SGDOptions(0.05).momentum(0.9));
  } else {
    opt = std::make_unique<torch::optim::AdamW>(fsdp.parameters(),
                                                torch::optim::AdamWOptions(1e-2));
    ref_opt = std::make_unique<torch::optim::AdamW>(ref->parameters(),
                                                    torch::optim::AdamWOptions(1e-2));
  }
  for (int step = 0; step < kSteps; ++step) {
    CHECK_OK(Step(*net, &fsdp, *opt, step, c.micro, rank, world));
    CHECK_OK(Step(*ref, nullptr, *ref_opt, step, c.micro, 0, 1));
    CHECK_OK(Check(freed(net->blocks[0]->fc2->weight) && freed(net->head->weight),
                   what + "full parameters must be freed after backward"));
    for (const auto& p : fsdp.params()) {
      CHECK_OK(Check(!p.requires_grad || (p.shard.grad().defined() &&
                                          p.shard.grad().sizes() == p.shard.sizes()),
                     what + p.fqn + ": shard gradient missing or misshapen"));
    }
  }
  const auto stats = fsdp.stats();
  if (c.strategy == ShardingStrategy::kFullShard && c.micro == 1) {
    // Per step: root + 3 blocks in forward, the 3 blocks again in backward.
    CHECK_OK(Check(stats.all_gathers == kSteps * 7,
                   absl::StrCat(what, stats.all_gathers, " all-gathers")));
  }
  CHECK_OK(Check(stats.reduce_scatters == kSteps * 4,
                 absl::StrCat(what, stats.reduce_scatters, " reduce-scatters")));

  auto full = FullParams(*net, &fsdp);
  if (!full.ok()) return full.status();
  auto expect = FullParams(*ref, nullptr);
  if (!expect.ok()) return expect.status();
  double max_diff = 0;
  for (const auto& [name, t] : *expect) {
    const at::Tensor& got = full->at(name);
    max_diff = std::max(max_diff, (got.to(at::kDouble) - t.to(at::kDouble)).abs().max().item<double>());
    if (world == 1 && !bf16) {
      // One rank: the same operations as plain training, bit for bit.
      CHECK_OK(Check(at::equal(got, t), what + name + " differs from plain training"));
    } else if (bf16) {
      // bf16 compute (8-bit mantissa, ~4e-3 relative per op) against an
      // fp32 reference: only the trajectory must agree.
      CHECK_OK(ExpectClose(got, t, 0.05, 0.03, what + name));
    } else {
      // fp32: the reduce-scatter averages per-rank means where the reference
      // takes one mean of the global batch; the sums differ by rounding only
      // (~1e-7 relative per step), far inside this tolerance after 4 steps.
      CHECK_OK(ExpectClose(got, t, 1e-4, 1e-5, what + name));
    }
  }
  CHECK_OK(Check(!at::equal(full->at("inp.weight"), MakeNet(100)->inp->weight),
                 what + "training did not change the parameters"));
  CHECK_OK(CheckOptimizerForms(
      fsdp, *opt, *ref, *ref_opt,
      [&]() -> std::unique_ptr<torch::optim::Optimizer> {
        if (bf16) {
          return std::make_unique<torch::optim::SGD>(fsdp.parameters(),
                                                     torch::optim::SGDOptions(0.05).momentum(0.9));
        }
        return std::make_unique<torch::optim::AdamW>(fsdp.parameters(),
                                                     torch::optim::AdamWOptions(1e-2));
      },
      bf16, what));
  if (rank == 0) std::cerr << what << "max |FSDP - single process| = " << max_diff << "\n";
  return ctx->Barrier();
}

absl::Status CheckAll(const std::shared_ptr<DistributedContext>& ctx) {
  CHECK_OK(CheckTraining(ctx, Case{}));
  Case sgo;
  sgo.strategy = ShardingStrategy::kShardGradOp;
  CHECK_OK(CheckTraining(ctx, sgo));
  Case accumulate;
  accumulate.micro = 2;
  CHECK_OK(CheckTraining(ctx, accumulate));
  Case bf16;
  bf16.precision = FsdpPrecision::kBf16Mixed;
  CHECK_OK(CheckTraining(ctx, bf16));

  // A unit called without being one is refused; so is a model that differs
  // between ranks.
  std::shared_ptr<Net> odd = std::make_shared<Net>(ctx->rank() == 1 ? 2 : 3);
  auto refused = FullyShardedDataParallel::Create(odd, ctx, FsdpOptions{});
  if (ctx->world_size() > 1) {
    CHECK_OK(Check(!refused.ok() && refused.status().message().find("different parameters") !=
                                        std::string::npos,
                   "mismatched model: " + refused.status().ToString()));
  }
  return ctx->Barrier();
}

absl::Status RunRank(const strategies::ClusterEnvironment& c) {
  auto ctx = MakeContext(c);
  if (!ctx.ok()) return ctx.status();
  return CheckAll(*ctx);
}

class Fsdp : public ::testing::TestWithParam<int> {};

TEST_P(Fsdp, MatchesSingleProcessTraining) {
  absl::Status s = RunRanks(GetParam(), {{"FSDP_TEST_CASE", "train"}}, RunRank);
  EXPECT_TRUE(s.ok()) << s;
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Fsdp, ::testing::Values(2, 3));

TEST(FsdpSingleProcess, WorldOfOneIsPlainTrainingBitForBit) {
  auto ctx = SingleContext();
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  absl::Status s = CheckTraining(*ctx, Case{});
  EXPECT_TRUE(s.ok()) << s;
}

TEST(FsdpSingleProcess, CallRejectsModulesThatAreNotUnits) {
  auto ctx = SingleContext();
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  std::shared_ptr<Net> net = MakeNet(1);
  FsdpOptions options;
  options.wrap_policy = BlockPolicy();
  auto fsdp = FullyShardedDataParallel::Create(net, *ctx, options);
  ASSERT_TRUE(fsdp.ok()) << fsdp.status();
  EXPECT_THROW((*fsdp)->Call(*net->head, [&] { return at::zeros({1}); }), std::invalid_argument);
  // A module wrapped twice is refused (its parameters already have hooks).
  auto twice = FullyShardedDataParallel::Create(net, *ctx, options);
  EXPECT_FALSE(twice.ok());
  // Size-based policy: blocks have 2*(9*19+19)+... > 300 parameters each.
  std::shared_ptr<Net> other = MakeNet(2);
  options.wrap_policy = strategies::WrapBySize(300);
  auto by_size = FullyShardedDataParallel::Create(other, *ctx, options);
  ASSERT_TRUE(by_size.ok()) << by_size.status();
  EXPECT_EQ((*by_size)->unit_names(),
            std::vector<std::string>({"block0", "block1", "block2", ""}));
}

}  // namespace

}  // namespace fabric::testing

int main(int argc, char** argv) {
  return fabric::testing::MultiProcessTestMain(argc, argv, fabric::testing::RunRank);
}
