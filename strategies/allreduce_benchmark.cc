// All-reduce throughput and DDP steps/s on 2 local ranks with our Gloo
// process group, next to Python torch.distributed (Gloo) doing the same
// (allreduce_benchmark.py, run after our ranks are done so that they do not
// compete for the cores).
//
//   bazel run -c opt //strategies:allreduce_benchmark
//
// The process started by the user becomes rank 0 and starts rank 1 through
// the Launcher.

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/sgd.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "strategies/ddp.h"
#include "strategies/launcher.h"
#include "strategies/process_group.h"

ABSL_FLAG(std::string, python, "", "Python with torch; empty: skip the Python side");
ABSL_FLAG(std::string, script, "strategies/allreduce_benchmark.py", "the Python twin");
ABSL_FLAG(std::string, sizes_mib, "1,4,16,64,256", "all-reduce buffer sizes in MiB");
ABSL_FLAG(double, min_seconds, 1.0, "minimum measuring time per size");
ABSL_FLAG(int, ddp_steps, 50, "DDP steps measured");
ABSL_FLAG(int, hidden, 1024, "MLP hidden width");
ABSL_FLAG(int, batch, 64, "per-rank batch");

namespace fabric::strategies {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds per call of `fn`; all ranks run the same iteration count (rank 0
// decides when to stop).
absl::StatusOr<double> Timed(DistributedContext& ctx, const std::function<absl::Status()>& fn,
                             double min_seconds, int min_iters) {
  for (int i = 0; i < 2; ++i) {
    if (absl::Status s = fn(); !s.ok()) return s;
  }
  int iters = 0;
  const double start = Now();
  while (true) {
    if (absl::Status s = fn(); !s.ok()) return s;
    ++iters;
    const double elapsed = Now() - start;
    at::Tensor done = at::full({1}, iters >= min_iters && elapsed >= min_seconds ? 1 : 0, at::kLong);
    if (absl::Status s = ctx.Broadcast(done, 0); !s.ok()) return s;
    if (done.item<int64_t>() != 0) return elapsed / iters;
  }
}

absl::StatusOr<double> DdpStepsPerSecond(const std::shared_ptr<DistributedContext>& ctx) {
  const int hidden = absl::GetFlag(FLAGS_hidden), batch = absl::GetFlag(FLAGS_batch);
  at::manual_seed(0);
  auto model = std::make_shared<torch::nn::SequentialImpl>(
      torch::nn::Linear(256, hidden), torch::nn::ReLU(), torch::nn::Linear(hidden, hidden),
      torch::nn::ReLU(), torch::nn::Linear(hidden, 10));
  absl::StatusOr<std::unique_ptr<DistributedDataParallel>> ddp =
      DistributedDataParallel::Create(model, ctx);
  if (!ddp.ok()) return ddp.status();
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.01));
  at::Tensor x = at::randn({batch, 256});
  at::Tensor y = at::randint(0, 10, {batch}, at::kLong);
  auto step = [&] {
    sgd.zero_grad();
    torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    sgd.step();
  };
  for (int i = 0; i < 5; ++i) step();
  if (absl::Status s = ctx->Barrier(); !s.ok()) return s;
  const int steps = absl::GetFlag(FLAGS_ddp_steps);
  const double start = Now();
  for (int i = 0; i < steps; ++i) step();
  if (absl::Status s = ctx->Barrier(); !s.ok()) return s;
  return steps / (Now() - start);
}

struct Results {
  std::map<int64_t, double> allreduce;  // bytes -> seconds per op
  double ddp = 0;
};

absl::StatusOr<Results> RunOurs(const ClusterEnvironment& cluster) {
  at::set_num_threads(1);
  DistributedOptions options;
  options.timeout = absl::Minutes(5);
  absl::StatusOr<std::shared_ptr<DistributedContext>> ctx = DistributedContext::Create(cluster, options);
  if (!ctx.ok()) return ctx.status();
  Results results;
  for (absl::string_view size : absl::StrSplit(absl::GetFlag(FLAGS_sizes_mib), ',', absl::SkipEmpty())) {
    int mib = 0;
    if (!absl::SimpleAtoi(size, &mib) || mib <= 0) return absl::InvalidArgumentError("bad --sizes_mib");
    at::Tensor t = at::ones({int64_t{mib} * 1024 * 1024 / 4});
    absl::StatusOr<double> per = Timed(**ctx, [&] { return (*ctx)->AllReduce(t); },
                                       absl::GetFlag(FLAGS_min_seconds), 3);
    if (!per.ok()) return per.status();
    results.allreduce[t.numel() * 4] = *per;
  }
  absl::StatusOr<double> ddp = DdpStepsPerSecond(*ctx);
  if (!ddp.ok()) return ddp.status();
  results.ddp = *ddp;
  return results;
}

absl::StatusOr<Results> RunPython() {
  const std::string command = absl::StrFormat(
      "'%s' '%s' --sizes_mib=%s --min_seconds=%f --ddp_steps=%d --hidden=%d --batch=%d",
      absl::GetFlag(FLAGS_python), absl::GetFlag(FLAGS_script), absl::GetFlag(FLAGS_sizes_mib),
      absl::GetFlag(FLAGS_min_seconds), absl::GetFlag(FLAGS_ddp_steps),
      absl::GetFlag(FLAGS_hidden), absl::GetFlag(FLAGS_batch));
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError("cannot run " + command);
  Results results;
  char line[512];
  while (fgets(line, sizeof(line), pipe) != nullptr) {
    std::vector<std::string> words = absl::StrSplit(absl::StripAsciiWhitespace(line), ' ');
    if (words.size() == 3 && words[0] == "allreduce") {
      int64_t bytes = 0;
      double per = 0;
      if (absl::SimpleAtoi(words[1], &bytes) && absl::SimpleAtod(words[2], &per)) {
        results.allreduce[bytes] = per;
      }
    } else if (words.size() == 2 && words[0] == "ddp") {
      (void)absl::SimpleAtod(words[1], &results.ddp);
    }
  }
  int status = pclose(pipe);
  if (status != 0) return absl::InternalError(absl::StrCat(command, " failed: status ", status));
  return results;
}

int Main() {
  LaunchOptions options;
  options.devices = 2;
  absl::StatusOr<std::unique_ptr<Launcher>> launcher = Launcher::Launch(options);
  if (!launcher.ok()) {
    std::cerr << launcher.status() << "\n";
    return 1;
  }
  absl::StatusOr<Results> ours = RunOurs((*launcher)->cluster());
  if (!ours.ok()) {
    std::cerr << "rank " << (*launcher)->cluster().rank << ": " << ours.status() << "\n";
    return 1;
  }
  if ((*launcher)->cluster().rank != 0) return 0;
  if (absl::Status s = (*launcher)->Finish(absl::Minutes(1)); !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  Results python;
  if (!absl::GetFlag(FLAGS_python).empty()) {
    absl::StatusOr<Results> r = RunPython();
    if (!r.ok()) {
      std::cerr << r.status() << "\n";
    } else {
      python = *r;
    }
  }
  // Bus bandwidth as nccl-tests define it: bytes * 2(n-1)/n per second.
  const double bus = 2.0 * (2 - 1) / 2;
  absl::PrintF("all_reduce (sum, float32), 2 ranks, Gloo over 127.0.0.1\n");
  absl::PrintF("%10s | %12s %12s | %12s %12s\n", "size", "fabric ms", "fabric GB/s", "python ms",
               "python GB/s");
  for (const auto& [bytes, per] : ours->allreduce) {
    auto it = python.allreduce.find(bytes);
    const double py = it == python.allreduce.end() ? 0 : it->second;
    absl::PrintF("%10s | %12.3f %12.3f | %12.3f %12.3f\n", HumanBytes(bytes), per * 1e3,
                 bytes * bus / per / 1e9, py * 1e3, py > 0 ? bytes * bus / py / 1e9 : 0.0);
  }
  absl::PrintF("DDP MLP 256-%d-%d-10, batch %d per rank, SGD: fabric %.1f steps/s, python %.1f steps/s\n",
               absl::GetFlag(FLAGS_hidden), absl::GetFlag(FLAGS_hidden), absl::GetFlag(FLAGS_batch),
               ours->ddp, python.ddp);
  return 0;
}

}  // namespace
}  // namespace fabric::strategies

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return fabric::strategies::Main();
}
