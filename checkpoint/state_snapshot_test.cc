// StateSnapshot: what it copies, what it only references, and the deferred
// copies a load overlaps with its first reads.
#include "checkpoint/state_snapshot.h"

#include <memory>

#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>

#include "checkpoint/optimizer_state.h"

namespace fabric {
namespace {

struct Live {
  torch::nn::Linear net{4, 3};
  std::shared_ptr<torch::optim::Adam> opt =
      std::make_shared<torch::optim::Adam>(net->parameters(), 1e-2);
  Live() { Step(); }
  void Step() {
    opt->zero_grad();
    net->forward(torch::ones({2, 4})).sum().backward();
    opt->step();
  }
  State state() { return State{{"model", net.ptr()}, {"optimizer", opt}, {"step", 7}}; }
  at::Tensor exp_avg() const {
    absl::StatusOr<Dict> d = OptimizerStateDict(*opt);
    EXPECT_TRUE(d.ok());
    return d->Find("state")->as_dict().Find(Value(int64_t{0}))->as_dict().Find("exp_avg")
        ->as_tensor();
  }
};

// Fabric's all-or-nothing loads.
LoadOptions IntoNewTensors() {
  LoadOptions o;
  o.into_live_optimizer_buffers = false;
  return o;
}

TEST(StateSnapshot, CopiesParametersAndReferencesOptimizerStateOfLoadsIntoNewTensors) {
  Live live;
  State state = live.state();
  absl::StatusOr<StateSnapshot> s = StateSnapshot::Of(state, {}, IntoNewTensors());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->bytes(), (4 * 3 + 3) * sizeof(float));  // the parameters only
  LoadOptions into_live;
  absl::StatusOr<StateSnapshot> full = StateSnapshot::Of(state, {}, into_live);
  ASSERT_TRUE(full.ok());
  // + exp_avg and exp_avg_sq per parameter, and the step counters.
  EXPECT_GE(full->bytes(), 3 * s->bytes());
  EXPECT_LE(full->bytes(), 3 * s->bytes() + 2 * sizeof(double));

  const at::Tensor weight = live.net->weight.detach().clone();
  const at::Tensor avg = live.exp_avg().clone();
  live.Step();  // Adam updates its buffers in place
  ASSERT_FALSE(at::equal(live.net->weight, weight));
  state["step"].value() = 8;
  ASSERT_TRUE(full->Restore(state).ok());
  EXPECT_TRUE(at::equal(live.net->weight, weight));
  EXPECT_TRUE(at::equal(live.exp_avg(), avg));
  EXPECT_EQ(state["step"].value().as_int(), 7);
}

TEST(StateSnapshot, DeferredCopiesAreLeftAloneUntilTaken) {
  Live live;
  State state = live.state();
  absl::StatusOr<StateSnapshot> s = StateSnapshot::Deferred(state, {}, IntoNewTensors());
  ASSERT_TRUE(s.ok()) << s.status();
  const at::Tensor weight = live.net->weight.detach().clone();
  // Not copied yet: Restore must not write the live tensors with nothing.
  ASSERT_TRUE(s->Restore(state).ok());
  EXPECT_TRUE(at::equal(live.net->weight, weight));

  ASSERT_TRUE(s->CopyTensors().ok());
  {
    torch::NoGradGuard no_grad;
    live.net->weight.fill_(5);
  }
  ASSERT_TRUE(s->Restore(state).ok());
  EXPECT_TRUE(at::equal(live.net->weight, weight));
}

TEST(StateSnapshot, BackgroundCopiesGateTheFirstLiveWrite) {
  Live live;
  State state = live.state();
  absl::StatusOr<StateSnapshot> s = StateSnapshot::Deferred(state, {}, LoadOptions{});
  ASSERT_TRUE(s.ok());
  const at::Tensor weight = live.net->weight.detach().clone();
  BackgroundCopies copies(&*s);
  const LoadOptions gated = copies.Gating(LoadOptions{});
  ASSERT_TRUE(gated.before_live_writes);
  ASSERT_TRUE(gated.before_live_writes().ok());  // the copies are done once it returns
  {
    torch::NoGradGuard no_grad;
    live.net->weight.fill_(5);
  }
  EXPECT_TRUE(copies.Wait().ok());  // again: same status, no second join
  absl::Status load = absl::DataLossError("refused");
  EXPECT_EQ(RestoreOnFailure(*s, &state, load).code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(at::equal(live.net->weight, weight));
}

}  // namespace
}  // namespace fabric
