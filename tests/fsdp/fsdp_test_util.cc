#include "tests/fsdp/fsdp_test_util.h"

#include <cmath>
#include <sstream>
#include <utility>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "checkpoint/optimizer_state.h"
#include "checkpoint/torch_save.h"
#include "strategies/free_port.h"
#include "checkpoint/state.h"
#include "strategies/fsdp_checkpoint.h"

namespace fabric::testing {

using strategies::FullyShardedDataParallel;

Block::Block(int width) {
  fc1 = register_module("fc1", torch::nn::Linear(width, 2 * width + 1));
  fc2 = register_module("fc2", torch::nn::Linear(2 * width + 1, width));
}

at::Tensor Block::forward(const at::Tensor& x) { return x + fc2(at::tanh(fc1(x))); }

Net::Net(int n) {
  inp = register_module("inp", torch::nn::Linear(kIn, kWidth));
  for (int i = 0; i < n; ++i) {
    blocks.push_back(register_module("block" + std::to_string(i), std::make_shared<Block>(kWidth)));
  }
  head = register_module("head", torch::nn::Linear(kWidth, kOut));
  scale = register_parameter("scale", at::full({}, 1.25));
  running = register_buffer("running", at::arange(kOut).to(at::kFloat));
}

at::Tensor Net::forward(const at::Tensor& x, FullyShardedDataParallel* fsdp) {
  at::Tensor h = at::tanh(inp(fsdp != nullptr ? fsdp->CastInput(x) : x));
  for (const auto& b : blocks) {
    if (fsdp != nullptr) {
      h = fsdp->Call(*b, [&] { return b->forward(h); });
    } else {
      h = b->forward(h);
    }
  }
  return head(h) * scale + running.to(h.scalar_type());
}

std::shared_ptr<Net> MakeNet(int seed) {
  at::manual_seed(seed);
  return std::make_shared<Net>();
}

strategies::FsdpWrapPolicy BlockPolicy() { return strategies::WrapModuleTypes({"Block"}); }

void Batch(int step, int rank, int world, at::Tensor* x, at::Tensor* y) {
  at::Generator gen = at::detail::createCPUGenerator(1000 + step);
  at::Tensor gx = at::randn({kGlobalBatch, kIn}, gen);
  at::Tensor gy = at::randn({kGlobalBatch, kOut}, gen);
  const int local = kGlobalBatch / world;
  *x = gx.narrow(0, rank * local, local);
  *y = gy.narrow(0, rank * local, local);
}

absl::Status TrainStep(Net& net, FullyShardedDataParallel* fsdp, torch::optim::Optimizer& opt,
                       int step, int rank, int world) {
  at::Tensor x, y;
  Batch(step, fsdp != nullptr ? rank : 0, fsdp != nullptr ? world : 1, &x, &y);
  opt.zero_grad();
  try {
    at::Tensor out = fsdp != nullptr ? fsdp->Forward([&] { return net.forward(x, fsdp); })
                                     : net.forward(x);
    at::Tensor loss = (out - y).pow(2).mean();
    loss.backward();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("step ", step, ": ", e.what()));
  }
  opt.step();
  return absl::OkStatus();
}

absl::StatusOr<std::map<std::string, at::Tensor>> FullParams(Net& net,
                                                             FullyShardedDataParallel* fsdp) {
  std::map<std::string, at::Tensor> out;
  if (fsdp == nullptr) {
    for (const auto& item : net.named_parameters()) out[item.key()] = item.value().detach().clone();
    return out;
  }
  const auto& params = fsdp->params();
  for (size_t i = 0; i < params.size(); ++i) {
    absl::StatusOr<at::Tensor> t = fsdp->GatherFull(static_cast<int>(i), params[i].shard);
    if (!t.ok()) return t.status();
    out[params[i].fqn] = t->clone();
  }
  return out;
}

absl::Status ExpectClose(const at::Tensor& a, const at::Tensor& b, double rtol, double atol,
                         const std::string& what) {
  if (a.sizes() != b.sizes()) {
    std::ostringstream msg;
    msg << what << ": shape " << a.sizes() << " vs " << b.sizes();
    return absl::InternalError(msg.str());
  }
  at::Tensor da = a.to(at::kDouble), db = b.to(at::kDouble);
  if (!at::allclose(da, db, rtol, atol)) {
    return absl::InternalError(absl::StrCat(what, ": max abs diff ",
                                            (da - db).abs().max().item<double>(), " (rtol ",
                                            rtol, ", atol ", atol, ")"));
  }
  return absl::OkStatus();
}

absl::Status RunRanks(int world, const std::map<std::string, std::string>& env,
                      const std::function<absl::Status(const strategies::ClusterEnvironment&)>&
                          rank_fn,
                      absl::Status* children_status) {
  strategies::LaunchOptions options;
  options.devices = world;
  for (const auto& [k, v] : env) options.extra_env.emplace_back(k, v);
  absl::StatusOr<std::unique_ptr<strategies::Launcher>> launcher =
      strategies::Launcher::Launch(options);
  if (!launcher.ok()) return launcher.status();
  absl::Status mine = rank_fn((*launcher)->cluster());
  absl::Status children = (*launcher)->Finish(absl::Seconds(120));
  if (children_status != nullptr) {
    *children_status = children;
    return mine;
  }
  if (!mine.ok()) return mine;
  return children;
}

absl::StatusOr<std::shared_ptr<strategies::DistributedContext>> MakeContext(
    const strategies::ClusterEnvironment& cluster, int timeout_s) {
  strategies::DistributedOptions options;
  options.backend = strategies::CommBackend::kGloo;
  options.timeout = absl::Seconds(timeout_s);
  return strategies::DistributedContext::Create(cluster, options);
}

absl::StatusOr<std::shared_ptr<strategies::DistributedContext>> SingleContext() {
  strategies::ClusterEnvironment c;
  absl::StatusOr<int> port = strategies::FindFreePort();
  if (!port.ok()) return port.status();
  c.master_port = *port;
  return MakeContext(c);
}

std::string ShardedPath(const std::string& dir, int n) { return absl::StrCat(dir, "/sharded_", n); }
std::string FullPath(const std::string& dir, int n) { return absl::StrCat(dir, "/full_", n, ".pt"); }
std::string RefPath(const std::string& dir, int n) { return absl::StrCat(dir, "/ref_", n, ".pt"); }
std::string ContPath(const std::string& dir, int n) { return absl::StrCat(dir, "/cont_", n, ".pt"); }

std::unique_ptr<FullyShardedDataParallel> WrapBlocks(
    std::shared_ptr<Net> net, std::shared_ptr<strategies::DistributedContext> ctx,
    absl::Status* status) {
  strategies::FsdpOptions options;
  options.wrap_policy = BlockPolicy();
  auto fsdp = FullyShardedDataParallel::Create(std::move(net), std::move(ctx), options);
  if (!fsdp.ok()) {
    *status = fsdp.status();
    return nullptr;
  }
  return *std::move(fsdp);
}

Value ExtraValue() {
  Dict d;
  d.Set("note", "hello");
  d.Set("t", at::arange(3).to(at::kFloat));
  return Value(std::move(d));
}

absl::StatusOr<Dict> ParamState(const torch::optim::Optimizer& opt, int i) {
  absl::StatusOr<Dict> sd = OptimizerStateDict(opt);
  if (!sd.ok()) return sd.status();
  const Value* st = sd->Find("state")->as_dict().Find(Value(static_cast<int64_t>(i)));
  if (st == nullptr) return absl::NotFoundError(absl::StrCat("no optimizer state for #", i));
  return st->as_dict();
}

absl::Status SaveReferenceRun(const strategies::ClusterEnvironment& c, const std::string& dir) {
  auto ctx_or = MakeContext(c);
  if (!ctx_or.ok()) return ctx_or.status();
  std::shared_ptr<strategies::DistributedContext> ctx = *ctx_or;
  const int rank = ctx->rank(), world = ctx->world_size();
  std::shared_ptr<Net> net = MakeNet(7);
  absl::Status s;
  auto fsdp = WrapBlocks(net, ctx, &s);
  if (!s.ok()) return s;
  auto opt_ptr = std::make_shared<torch::optim::AdamW>(
      fsdp->parameters(), torch::optim::AdamWOptions(kLr).weight_decay(0.05));
  torch::optim::AdamW& opt = *opt_ptr;
  for (int step = 0; step < kSavedSteps; ++step) {
    if (s = TrainStep(*net, fsdp.get(), opt, step, rank, world); !s.ok()) return s;
  }
  State state{{"model", fsdp->module_ptr()}, {"optimizer", opt_ptr}, {"step", kSavedSteps}};
  state.Set("extra", ExtraValue());
  const strategies::FsdpWrapperOf wrapper_of = strategies::WrapperLookup({fsdp.get()});
  if (s = strategies::FsdpSaveCheckpoint(ShardedPath(dir, world), state, wrapper_of, ctx.get()); !s.ok()) {
    return s;
  }
  strategies::FsdpCheckpointOptions full;
  full.state_dict_type = strategies::StateDictType::kFull;
  if (s = strategies::FsdpSaveCheckpoint(FullPath(dir, world), state, wrapper_of, ctx.get(), full); !s.ok()) {
    return s;
  }
  Dict ref;
  const auto& params = fsdp->params();
  for (size_t i = 0; i < params.size(); ++i) {
    absl::StatusOr<at::Tensor> p = fsdp->GatherFull(static_cast<int>(i), params[i].shard);
    if (!p.ok()) return p.status();
    ref.Set("p." + params[i].fqn, p->clone());
    absl::StatusOr<Dict> st = ParamState(opt, static_cast<int>(i));
    if (!st.ok()) return st.status();
    for (const char* name : {"exp_avg", "exp_avg_sq"}) {
      absl::StatusOr<at::Tensor> t =
          fsdp->GatherFull(static_cast<int>(i), st->Find(name)->as_tensor());
      if (!t.ok()) return t.status();
      ref.Set(absl::StrCat(name, ".", params[i].fqn), t->clone());
    }
    ref.Set("step." + params[i].fqn, st->Find("step")->as_tensor().clone());
  }
  if (rank == 0) {
    if (s = TorchSave(RefPath(dir, world), Value(std::move(ref))); !s.ok()) return s;
  }
  for (int step = kSavedSteps; step < kSavedSteps + kMoreSteps; ++step) {
    if (s = TrainStep(*net, fsdp.get(), opt, step, rank, world); !s.ok()) return s;
  }
  auto cont = FullParams(*net, fsdp.get());
  if (!cont.ok()) return cont.status();
  Dict cd;
  for (const auto& [k, v] : *cont) cd.Set(k, v);
  if (rank == 0) {
    if (s = TorchSave(ContPath(dir, world), Value(std::move(cd))); !s.ok()) return s;
  }
  return ctx->Barrier();
}

}  // namespace fabric::testing
