// DDP between real processes (2 and 3 ranks, Gloo on 127.0.0.1): training
// with DistributedDataParallel matches single-process training on the same
// global batch, parameters stay bit-identical across ranks, no_sync
// accumulates locally, unused parameters do not hang, and mismatched models
// are refused. The test process is rank 0; the Launcher re-executes this
// binary for the other ranks.

#include <unistd.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "strategies/cluster_environment.h"
#include "strategies/ddp.h"
#include "strategies/free_port.h"
#include "strategies/launcher.h"
#include "strategies/process_group.h"
#include "tests/distributed/test_util.h"
#include "tests/distributed/rank_main.h"

namespace fabric::testing {
namespace {

using strategies::ClusterEnvironment;
using strategies::DdpOptions;
using strategies::DistributedContext;
using strategies::DistributedDataParallel;

#define CHECK_OK(expr)                             \
  do {                                             \
    absl::Status check_status_ = (expr);           \
    if (!check_status_.ok()) return check_status_; \
  } while (false)

constexpr int kIn = 8, kOut = 4, kLocalBatch = 6, kSteps = 5;
// fp32: DDP averages per-rank means (pre-divided, summed in Gloo's ring
// order) where the reference takes one mean over the global batch; the sums
// differ in rounding only, ~1e-7 relative per step, so 5 SGD steps stay
// well within rtol 1e-5.
constexpr double kRtol = 1e-5, kAtol = 1e-6;

struct Mlp : torch::nn::Module {
  Mlp(int hidden, bool with_unused, float buffer_value) {
    fc1 = register_module("fc1", torch::nn::Linear(kIn, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, hidden));
    fc3 = register_module("fc3", torch::nn::Linear(hidden, kOut));
    if (with_unused) unused = register_module("unused", torch::nn::Linear(kOut, kOut));
    scale = register_buffer("scale", at::full({kOut}, buffer_value));
  }
  at::Tensor forward(const at::Tensor& x) {
    return fc3(at::tanh(fc2(at::tanh(fc1(x))))) * scale;
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr}, unused{nullptr};
  at::Tensor scale;
};

std::shared_ptr<Mlp> MakeModel(int seed, int hidden = 32, bool with_unused = false,
                               float buffer_value = 1.0f) {
  at::manual_seed(seed);
  return std::make_shared<Mlp>(hidden, with_unused, buffer_value);
}

at::Tensor Flat(const torch::nn::Module& m) {
  std::vector<at::Tensor> parts;
  for (const at::Tensor& p : m.parameters()) parts.push_back(p.detach().reshape({-1}));
  return at::cat(parts);
}

absl::Status ExpectClose(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  if (!at::allclose(a, b, kRtol, kAtol)) {
    return absl::InternalError(absl::StrCat(
        what, ": max abs diff ", (a - b).abs().max().item<double>(), " over rtol ", kRtol));
  }
  return absl::OkStatus();
}

// All ranks hold bit-identical parameters.
absl::Status ExpectSameOnAllRanks(DistributedContext& ctx, const at::Tensor& t,
                                  const std::string& what) {
  absl::StatusOr<std::vector<at::Tensor>> all = ctx.AllGather(t.contiguous());
  if (!all.ok()) return all.status();
  for (int r = 0; r < ctx.world_size(); ++r) {
    CHECK_OK(ExpectEqual((*all)[r], t, absl::StrCat(what, ": rank ", r, " vs rank ", ctx.rank())));
  }
  return absl::OkStatus();
}

// Trains `steps` SGD steps of `micro` micro-batches each, on the same data on
// every rank; DDP when ctx is given, else one process on the global batch.
absl::Status Train(std::shared_ptr<Mlp> model, DistributedDataParallel* ddp, int world, int rank,
                   int micro, bool manual_finish) {
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  at::manual_seed(1234);
  for (int step = 0; step < kSteps; ++step) {
    sgd.zero_grad();
    for (int m = 0; m < micro; ++m) {
      at::Tensor x = at::randn({world * kLocalBatch, kIn});
      at::Tensor y = at::randn({world * kLocalBatch, kOut});
      if (ddp != nullptr) {
        x = x.narrow(0, rank * kLocalBatch, kLocalBatch);
        y = y.narrow(0, rank * kLocalBatch, kLocalBatch);
      }
      at::Tensor loss = (model->forward(x) - y).pow(2).mean();
      if (ddp != nullptr && m + 1 < micro) {
        auto no_sync = ddp->NoSync();
        loss.backward();
      } else {
        loss.backward();
      }
      if (ddp != nullptr && m + 1 < micro && world > 1) {
        // Not synced: ranks saw different data, so their gradients differ.
        at::Tensor g = model->fc1->weight.grad().clone();
        absl::StatusOr<std::vector<at::Tensor>> all = ddp->context().AllGather(g);
        if (!all.ok()) return all.status();
        if (at::equal((*all)[0], (*all)[1])) {
          return absl::InternalError("gradients were synchronized inside NoSync()");
        }
      }
    }
    if (ddp != nullptr && manual_finish) CHECK_OK(ddp->FinishGradientSync());
    sgd.step();
  }
  return absl::OkStatus();
}

absl::Status CheckTraining(const std::shared_ptr<DistributedContext>& ctx, int micro,
                           bool manual_finish, int64_t first_bucket, int64_t bucket,
                           bool with_unused) {
  const std::string what = absl::StrCat("[micro=", micro, " manual=", manual_finish,
                                        " buckets=", first_bucket, "/", bucket,
                                        " unused=", with_unused, "] ");
  const int rank = ctx->rank(), world = ctx->world_size();
  // Each rank starts from different weights and buffers: DDP must broadcast
  // rank 0's.
  std::shared_ptr<Mlp> model = MakeModel(100 + rank, 32, with_unused, 1.0f + rank);
  std::shared_ptr<Mlp> reference = MakeModel(100, 32, with_unused, 1.0f);
  std::vector<std::string> keys_before;
  for (const auto& item : model->named_parameters()) keys_before.push_back(item.key());

  DdpOptions options;
  options.first_bucket_cap_bytes = first_bucket;
  options.bucket_cap_bytes = bucket;
  options.auto_finish = !manual_finish;
  absl::StatusOr<std::unique_ptr<DistributedDataParallel>> ddp =
      DistributedDataParallel::Create(model, ctx, options);
  if (!ddp.ok()) return ddp.status();
  CHECK_OK(ExpectEqual(Flat(*model), Flat(*reference), what + "parameters after setup"));
  CHECK_OK(ExpectEqual(model->scale, reference->scale, what + "buffer after setup"));

  // Buckets: every trainable parameter once, in reverse order.
  std::vector<int> flat_layout;
  for (const std::vector<int>& b : (*ddp)->bucket_layout()) {
    CHECK_OK(ExpectTrue(!b.empty(), what + "empty bucket"));
    flat_layout.insert(flat_layout.end(), b.begin(), b.end());
  }
  std::vector<int> reversed;
  for (int i = static_cast<int>(model->parameters().size()) - 1; i >= 0; --i) reversed.push_back(i);
  CHECK_OK(ExpectTrue(flat_layout == reversed, what + "bucket order is not reverse parameter order"));
  if (bucket < 4096) {
    CHECK_OK(ExpectTrue((*ddp)->bucket_layout().size() > 3, what + "expected many small buckets"));
  } else {
    CHECK_OK(ExpectTrue((*ddp)->bucket_layout().size() <= 2, what + "expected one or two buckets"));
  }

  CHECK_OK(Train(model, ddp->get(), world, rank, micro, manual_finish));
  CHECK_OK(Train(reference, nullptr, world, rank, micro, false));
  CHECK_OK(ExpectTrue((*ddp)->syncs_completed() == kSteps,
                      absl::StrCat(what, "syncs_completed=", (*ddp)->syncs_completed())));
  if (rank == 0) {
    std::cerr << what << "world " << world << ": max |DDP - single process| = "
              << (Flat(*model) - Flat(*reference)).abs().max().item<double>() << "\n";
  }
  CHECK_OK(ExpectClose(Flat(*model), Flat(*reference), what + "DDP vs single process"));
  CHECK_OK(ExpectTrue(!at::equal(Flat(*model), Flat(*MakeModel(100, 32, with_unused))),
                      what + "training did not change the parameters"));
  CHECK_OK(ExpectSameOnAllRanks(*ctx, Flat(*model), what + "parameters"));
  if (with_unused) {
    CHECK_OK(ExpectTrue(model->unused->weight.grad().defined() &&
                            model->unused->weight.grad().abs().sum().item<float>() == 0.0f,
                        what + "unused parameter should get a zero gradient"));
  }

  std::vector<std::string> keys_after;
  for (const auto& item : (*ddp)->module().named_parameters()) keys_after.push_back(item.key());
  CHECK_OK(ExpectTrue(keys_after == keys_before && keys_after.front() == "fc1.weight",
                      what + "state dict keys changed"));
  return absl::OkStatus();
}

absl::Status CheckDdp(const std::shared_ptr<DistributedContext>& ctx) {
  // Default 25 MiB buckets (one bucket), automatic finish.
  CHECK_OK(CheckTraining(ctx, 1, false, 1 << 20, 25 << 20, false));
  // Tiny buckets (several all-reduces in flight during backward), finishing
  // by hand.
  CHECK_OK(CheckTraining(ctx, 1, true, 256, 1024, false));
  // Gradient accumulation over 3 micro-batches with NoSync().
  CHECK_OK(CheckTraining(ctx, 3, false, 256, 1024, false));
  // A parameter that never gets a gradient.
  CHECK_OK(CheckTraining(ctx, 1, false, 256, 1024, true));

  // Ranks with different models are refused (on every rank) before training.
  std::shared_ptr<Mlp> odd = MakeModel(7, ctx->rank() == 1 ? 16 : 32);
  absl::StatusOr<std::unique_ptr<DistributedDataParallel>> refused =
      DistributedDataParallel::Create(odd, ctx);
  CHECK_OK(ExpectTrue(refused.status().code() == absl::StatusCode::kFailedPrecondition &&
                          refused.status().message().find("different parameters") !=
                              std::string::npos,
                      "mismatched model: " + refused.status().ToString()));
  return ctx->Barrier();
}

absl::Status RunRank(const ClusterEnvironment& c) {
  strategies::DistributedOptions options;
  options.timeout = absl::Seconds(30);
  absl::StatusOr<std::shared_ptr<DistributedContext>> ctx = DistributedContext::Create(c, options);
  if (!ctx.ok()) return ctx.status();
  return CheckDdp(*ctx);
}

class Ddp : public ::testing::TestWithParam<int> {};

TEST_P(Ddp, MatchesSingleProcessTraining) {
  strategies::LaunchOptions options;
  options.devices = GetParam();
  absl::StatusOr<std::unique_ptr<strategies::Launcher>> launcher =
      strategies::Launcher::Launch(options);
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  absl::Status mine = RunRank((*launcher)->cluster());
  EXPECT_TRUE(mine.ok()) << mine;
  absl::Status children = (*launcher)->Finish(absl::Seconds(60));
  EXPECT_TRUE(children.ok()) << children;
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Ddp, ::testing::Values(2, 3));

TEST(DdpSingleProcess, WorldOfOneIsPlainTraining) {
  // One rank: DDP must not change anything (no division, same result).
  ClusterEnvironment c;
  c.master_port = 0;
  absl::StatusOr<int> port = strategies::FindFreePort();
  ASSERT_TRUE(port.ok());
  c.master_port = *port;
  absl::StatusOr<std::shared_ptr<DistributedContext>> ctx = DistributedContext::Create(c);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  absl::Status s = CheckTraining(*ctx, 2, false, 256, 1024, false);
  EXPECT_TRUE(s.ok()) << s;
}

}  // namespace

}  // namespace fabric::testing

int main(int argc, char** argv) {
  return fabric::testing::MultiProcessTestMain(argc, argv, fabric::testing::RunRank);
}
