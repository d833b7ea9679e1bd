// Asynchronous against synchronous saves on the FSDP benchmark's state
// (strategies:fsdp_checkpoint_benchmark: --layers Linear(--width, --width),
// each its own FSDP unit, AdamW; 2.06 GiB of checkpoint with the defaults),
// 2 ranks launched by Fabric, sharded checkpoints:
//   bazel run //fabric:async_save_benchmark -- --dir=/some/disk/dir
//
// Prints, from rank 0, in one run: the time a synchronous save blocks, the
// time an asynchronous save blocks (and its background write), steps with
// and without a background write under them, the end-to-end time of
// --steps steps saving every --every steps with no saves / synchronous /
// asynchronous saves, and each phase's peak resident memory (VmHWM, reset
// between phases through /proc/self/clear_refs), max over ranks.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adamw.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "fabric/fabric.h"

ABSL_FLAG(std::string, dir, "/tmp/async_save_benchmark", "scratch folder on the disk to test");
ABSL_FLAG(int, layers, 11, "Linear layers");
ABSL_FLAG(int, width, 4096, "layer width");
ABSL_FLAG(int, batch, 4, "rows per rank and step");
ABSL_FLAG(int, repeat, 3, "saves of each kind to time (medians reported)");
ABSL_FLAG(int, overlap_steps, 1, "steps right after each timed save (sync and async)");
ABSL_FLAG(int, steps, 8, "steps of each end-to-end run");
ABSL_FLAG(int, every, 4, "save every this many steps in the end-to-end runs");

namespace {

double Now() { return absl::ToUnixMicros(absl::Now()) * 1e-6; }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double PeakGiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / (1024.0 * 1024.0);
  }
  return 0;
}

void ResetPeak() { std::ofstream("/proc/self/clear_refs") << "5"; }

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "async_save_benchmark: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

#define CHECK_OK(expr)                                        \
  do {                                                        \
    if (absl::Status s_ = (expr); !s_.ok()) return Fail(s_); \
  } while (0)

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string dir = absl::GetFlag(FLAGS_dir);
  const int width = absl::GetFlag(FLAGS_width), repeat = absl::GetFlag(FLAGS_repeat);
  fabric::FabricOptions options;
  options.accelerator = "cpu";
  options.devices = 2;
  options.strategy = "fsdp";
  options.sharding_strategy = "shard_grad_op";  // any module; the root is the unit
  auto f = fabric::Fabric::Create(options);
  if (!f.ok()) return Fail(f.status());
  fabric::Fabric& fabric = **f;
  CHECK_OK(fabric.Launch());
  const int rank = fabric.global_rank();
  if (rank == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  at::set_num_threads(1);  // two ranks on this machine's 2 cores
  torch::manual_seed(0);
  torch::nn::Sequential model;
  for (int i = 0; i < absl::GetFlag(FLAGS_layers); ++i) model->push_back(torch::nn::Linear(width, width));
  CHECK_OK(fabric.SetupModule(model));
  auto opt = std::make_shared<torch::optim::AdamW>(fabric.Parameters(model),
                                                   torch::optim::AdamWOptions(1e-5));
  int64_t step = 0;
  auto train_step = [&]() -> absl::Status {
    at::Tensor x = torch::randn({absl::GetFlag(FLAGS_batch), width});
    opt->zero_grad();
    at::Tensor loss = fabric.Forward(*model, [&] { return model->forward(x).pow(2).mean(); });
    if (absl::Status s = fabric.Backward(loss); !s.ok()) return s;
    opt->step();
    ++step;
    return absl::OkStatus();
  };
  auto state = [&] {
    return fabric::State{{"model", model}, {"optimizer", opt}, {"step", step}};
  };
  // Max over ranks.
  auto peak = [&](double mine) -> double {
    at::Tensor t = at::full({1}, mine, at::kDouble);
    (void)fabric.AllReduce(t, fabric::strategies::ReduceOp::kMax);
    return t.item<double>();
  };
  auto name = [&](const std::string& what, int i) { return absl::StrCat(dir, "/", what, "-", i); };
  const double start = Now();
  CHECK_OK(train_step());  // Adam state exists from here on

  // Steps alone.
  std::vector<double> plain_steps;
  for (int i = 0; i < 3; ++i) {
    const double t0 = Now();
    CHECK_OK(train_step());
    plain_steps.push_back(Now() - t0);
  }

  auto progress = [&](const std::string& what) {
    if (rank == 0) std::fprintf(stderr, "[%7.1f s] %s\n", Now() - start, what.c_str());
  };
  progress(absl::StrFormat("steps alone: median %.3f s", Median(plain_steps)));
  // Synchronous saves.
  ResetPeak();
  std::vector<double> sync;
  for (int i = 0; i < repeat; ++i) {
    CHECK_OK(fabric.Barrier());
    const double t0 = Now();
    fabric::State s = state();
    CHECK_OK(fabric.Save(name("sync", i), s));
    sync.push_back(Now() - t0);
    // The same steps as after each async save, so that both peaks hold
    // the steps' own memory (all-gathered parameters, gradients).
    for (int k = 0; k < absl::GetFlag(FLAGS_overlap_steps); ++k) CHECK_OK(train_step());
  }
  const double sync_peak = peak(PeakGiB());
  progress(absl::StrFormat("synchronous saves: median %.3f s", Median(sync)));

  // Asynchronous saves, training steps overlapping each write.
  ResetPeak();
  std::vector<double> blocked, copies, background, overlapped_steps, first_blocked;
  for (int i = 0; i < repeat + 1; ++i) {
    CHECK_OK(fabric.Barrier());
    const double t0 = Now();
    fabric::State s = state();
    absl::StatusOr<fabric::SaveHandle> h = fabric.SaveAsync(name("async", i), s);
    if (!h.ok()) return Fail(h.status());
    const double b = Now() - t0;
    (i == 0 ? first_blocked : blocked).push_back(b);  // the first allocates its buffers
    // The same number of steps on every rank (they are collectives); a step
    // counts as overlapped when the write was still going at its start (a
    // step can outlast the whole write).
    for (int k = 0; k < absl::GetFlag(FLAGS_overlap_steps); ++k) {
      const double s0 = Now();
      const bool writing = !h->done();
      CHECK_OK(train_step());
      if (writing) overlapped_steps.push_back(Now() - s0);
    }
    CHECK_OK(h->Wait());
    background.push_back(absl::ToDoubleSeconds(h->times().write));
    if (i > 0) copies.push_back(absl::ToDoubleSeconds(h->times().copies));
  }
  const double async_peak = peak(PeakGiB());
  progress(absl::StrFormat("asynchronous saves: blocked median %.3f s", Median(blocked)));

  // End to end.
  auto run = [&](int kind) -> absl::StatusOr<double> {
    if (absl::Status s = fabric.Barrier(); !s.ok()) return s;
    const double t0 = Now();
    for (int i = 1; i <= absl::GetFlag(FLAGS_steps); ++i) {
      if (absl::Status s = train_step(); !s.ok()) return s;
      if (kind == 0 || i % absl::GetFlag(FLAGS_every) != 0) continue;
      fabric::State s = state();
      absl::Status saved = kind == 1 ? fabric.Save(name("e2e_sync", i), s)
                                     : fabric.SaveAsync(name("e2e_async", i), s).status();
      if (!saved.ok()) return saved;
    }
    if (absl::Status s = fabric.WaitForSave(); !s.ok()) return s;
    if (absl::Status s = fabric.Barrier(); !s.ok()) return s;
    return Now() - t0;
  };
  std::vector<double> e2e;
  for (int kind : {0, 1, 2}) {
    absl::StatusOr<double> t = run(kind);
    if (!t.ok()) return Fail(t.status());
    e2e.push_back(*t);
    progress(absl::StrFormat("end to end (%s): %.2f s", kind == 0 ? "no saves" : kind == 1 ? "sync" : "async", *t));
  }

  if (rank == 0) {
    const double bytes = static_cast<double>(fabric.last_async_save().staged_bytes);
    std::printf("state: %d x Linear(%d, %d), AdamW, 2 ranks, sharded; rank 0 stages %.2f GiB\n",
                absl::GetFlag(FLAGS_layers), width, width, bytes / (1 << 30));
    std::printf("sync save (blocks for all of it): median %.3f s of %d\n", Median(sync), repeat);
    std::printf("async save blocked: median %.3f s of %d (%.1f%% of sync; copies %.3f s, "
                "planning and the rest %.3f s); first save %.3f s "
                "(allocates and prefaults its buffers)\n",
                Median(blocked), repeat, 100 * Median(blocked) / Median(sync), Median(copies),
                Median(blocked) - Median(copies), first_blocked[0]);
    std::printf("copy bandwidth into staging: %.2f GB/s\n",
                bytes / std::max(1e-9, Median(copies)) / 1e9);
    std::printf("async background write: median %.3f s\n", Median(background));
    std::printf("step: alone median %.3f s; overlapping a background write median %.3f s "
                "(%d steps, %+.1f%%)\n",
                Median(plain_steps), Median(overlapped_steps),
                static_cast<int>(overlapped_steps.size()),
                overlapped_steps.empty() ? 0.0
                                         : 100 * (Median(overlapped_steps) / Median(plain_steps) - 1));
    std::printf("end to end, %d steps saving every %d: none %.2f s | sync %.2f s | async %.2f s\n",
                absl::GetFlag(FLAGS_steps), absl::GetFlag(FLAGS_every), e2e[0], e2e[1], e2e[2]);
    std::printf("peak rss (max over ranks): sync saves %.2f GiB | async saves %.2f GiB\n", sync_peak,
                async_peak);
  }
  std::fflush(stdout);
  CHECK_OK(fabric.Barrier());
  if (rank == 0) std::filesystem::remove_all(dir);
  CHECK_OK(fabric.Finish());
  return 0;
}
