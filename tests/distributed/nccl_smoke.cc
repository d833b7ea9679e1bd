// NCCL path on a GPU machine (world size 1: NCCL refuses two ranks on one
// GPU): every collective and one DDP step on CUDA tensors. Built only with
// --config=cuda; run by hand on a machine with a GPU:
//   bazel build --config=cuda //tests/distributed:nccl_smoke

#include <iostream>
#include <memory>

#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "strategies/ddp.h"
#include "strategies/free_port.h"
#include "strategies/process_group.h"

namespace {

using fabric::strategies::ClusterEnvironment;
using fabric::strategies::CommBackend;
using fabric::strategies::DistributedContext;
using fabric::strategies::DistributedOptions;

absl::Status Check(bool ok, const char* what) {
  return ok ? absl::OkStatus() : absl::InternalError(what);
}

#define CHECK_OK(expr)                 \
  do {                                 \
    absl::Status s_ = (expr);          \
    if (!s_.ok()) return s_;           \
  } while (false)

absl::Status Run() {
  ClusterEnvironment c;
  absl::StatusOr<int> port = fabric::strategies::FindFreePort();
  if (!port.ok()) return port.status();
  c.master_port = *port;
  DistributedOptions options;
  options.backend = CommBackend::kNccl;
  options.timeout = absl::Seconds(60);
  absl::StatusOr<std::shared_ptr<DistributedContext>> ctx = DistributedContext::Create(c, options);
  if (!ctx.ok()) return ctx.status();
  DistributedContext& d = **ctx;
  std::cout << "backend " << d.backend_name() << " on " << d.device() << "\n";
  CHECK_OK(Check(d.backend_name() == "nccl" && d.device().is_cuda(), "not nccl on cuda"));
  at::TensorOptions cuda = at::TensorOptions().device(d.device());
  CHECK_OK(d.Barrier());
  at::Tensor t = at::full({1 << 20}, 3.0f, cuda);
  CHECK_OK(d.AllReduce(t, fabric::strategies::ReduceOp::kAvg));
  CHECK_OK(Check(at::equal(t.cpu(), at::full({1 << 20}, 3.0f)), "all_reduce"));
  CHECK_OK(d.Broadcast(t, 0));
  absl::StatusOr<std::vector<at::Tensor>> g = d.AllGather(at::ones({4}, cuda));
  CHECK_OK(g.status());
  CHECK_OK(Check(g->size() == 1 && g->front().is_cuda(), "all_gather"));
  absl::StatusOr<at::Tensor> rs = d.ReduceScatter(at::arange(4, cuda.dtype(at::kFloat)));
  CHECK_OK(rs.status());
  CHECK_OK(Check(at::equal(rs->cpu(), at::arange(4, at::kFloat)), "reduce_scatter"));
  absl::StatusOr<std::string> bytes = d.BroadcastBytes("hello nccl");
  CHECK_OK(bytes.status());
  CHECK_OK(Check(*bytes == "hello nccl", "broadcast bytes"));
  at::Tensor cpu = at::ones({2});
  CHECK_OK(Check(d.AllReduce(cpu).code() == absl::StatusCode::kInvalidArgument, "cpu tensor refused"));

  auto model = std::make_shared<torch::nn::LinearImpl>(16, 4);
  model->to(d.device());
  absl::StatusOr<std::unique_ptr<fabric::strategies::DistributedDataParallel>> ddp =
      fabric::strategies::DistributedDataParallel::Create(model, *ctx);
  CHECK_OK(ddp.status());
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1));
  for (int i = 0; i < 3; ++i) {
    sgd.zero_grad();
    model->forward(at::randn({8, 16}, cuda)).pow(2).mean().backward();
    sgd.step();
  }
  CHECK_OK(Check((*ddp)->syncs_completed() == 3, "ddp syncs"));
  return d.Barrier();
}

}  // namespace

int main() {
#ifndef FABRIC_WITH_CUDA
  std::cout << "built without --config=cuda: nothing to check\n";
  return 0;
#else
  absl::Status s = Run();
  std::cout << (s.ok() ? "NCCL smoke OK" : s.ToString()) << "\n";
  return s.ok() ? 0 : 1;
#endif
}
