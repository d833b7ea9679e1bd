// A user program that saves asynchronously under Fabric (single device, DDP
// or FSDP; it launches its own ranks). Driven by async_save_test.
//
//   --mode=snapshot: trains, saves `ref` synchronously and `async`
//     asynchronously at the same step, then steps the optimizer at once
//     (training collectives run while the save coordinates on its own group);
//     then saves `async2` asynchronously (its staging must allocate nothing)
//     and `final` synchronously.
//   --mode=losses: trains --steps steps (resuming from --resume), saving
//     asynchronously every 2 steps to <dir>/step-<n>; prints each step's loss.
//   --mode=fail: `good` saves; an asynchronous save to a path whose folder
//     turned into a file after the up-front checks fails in the background: the next SaveAsync and then Finish report it.
//   --mode=budget: with --max_staging_bytes below the state's size, SaveAsync
//     fails on every rank and a synchronous Save then works.
//   --mode=kill: `good` saves; rank 1 dies right after staging `killed`;
//     rank 0 reports how long its wait took and the error.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <torch/nn/modules/container/sequential.h>
#include <torch/optim/sgd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "fabric/fabric.h"
#include "tests/fabric_ddp/ddp_common.h"

namespace {

struct Run {
  fabric::Fabric& fabric;
  torch::nn::Sequential model;
  std::shared_ptr<torch::optim::SGD> opt;
  int64_t step = 0;

  // One step on this rank's slice of the global batch; the loss of rank 0's.
  absl::StatusOr<float> Step() {
    auto [x, y] = fabric_test::GlobalBatch(step);
    const int64_t per = x.size(0) / fabric.world_size();
    x = x.narrow(0, per * fabric.global_rank(), per);
    y = y.narrow(0, per * fabric.global_rank(), per);
    opt->zero_grad();
    at::Tensor loss = fabric.Forward(*model, [&] { return fabric_test::Loss(model, x, y); });
    absl::Status s = fabric.Backward(loss);
    if (!s.ok()) return s;
    opt->step();
    ++step;
    return loss.item<float>();
  }
  fabric::State state() { return {{"model", model}, {"optimizer", opt}, {"step", step}}; }
};

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "async_program: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

#define CHECK_OK(expr)                              \
  do {                                              \
    if (absl::Status s_ = (expr); !s_.ok()) return Fail(s_); \
  } while (0)

int main(int argc, char** argv) {
  int devices = 1, steps = 4;
  int64_t max_staging = 0;
  std::string dir, mode = "snapshot", strategy = "auto", state_dict_type = "sharded", resume;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--devices=", 0) == 0) devices = std::stoi(a.substr(10));
    else if (a.rfind("--steps=", 0) == 0) steps = std::stoi(a.substr(8));
    else if (a.rfind("--dir=", 0) == 0) dir = a.substr(6);
    else if (a.rfind("--mode=", 0) == 0) mode = a.substr(7);
    else if (a.rfind("--resume=", 0) == 0) resume = a.substr(9);
    else if (a.rfind("--strategy=", 0) == 0) strategy = a.substr(11);
    else if (a.rfind("--state_dict_type=", 0) == 0) state_dict_type = a.substr(18);
    else if (a.rfind("--max_staging_bytes=", 0) == 0) max_staging = std::stoll(a.substr(20));
  }
  fabric::FabricOptions options;
  options.accelerator = "cpu";
  options.devices = devices;
  options.strategy = strategy;
  options.state_dict_type = state_dict_type;
  options.timeout = absl::Seconds(60);
  options.max_staging_bytes = max_staging;
  auto f = fabric::Fabric::Create(options);
  if (!f.ok()) return Fail(f.status());
  fabric::Fabric& fabric = **f;
  CHECK_OK(fabric.Launch());
  Run run{fabric, fabric_test::MakeModel(), nullptr};
  CHECK_OK(fabric.SetupModule(run.model));
  run.opt = fabric_test::MakeOptimizer(fabric.Parameters(run.model));
  const std::string ext = state_dict_type == "full" || fabric.Fsdp(*run.model) == nullptr ? ".pt" : "";
  auto path = [&](const std::string& name) { return absl::StrCat(dir, "/", name, ext); };

  if (mode == "snapshot") {
    for (int i = 0; i < 3; ++i) CHECK_OK(run.Step().status());
    fabric::State state = run.state();
    CHECK_OK(fabric.Save(path("ref"), state));
    absl::StatusOr<fabric::SaveHandle> h = fabric.SaveAsync(path("async"), state);
    if (!h.ok()) return Fail(h.status());
    // Modified in place right away, while the save is in flight.
    for (int i = 0; i < steps; ++i) CHECK_OK(run.Step().status());
    CHECK_OK(h->Wait());
    fabric::State later = run.state();
    absl::StatusOr<fabric::SaveHandle> h2 = fabric.SaveAsync(path("async2"), later);
    if (!h2.ok()) return Fail(h2.status());
    CHECK_OK(h2->Wait());
    CHECK_OK(fabric.Save(path("final"), later));
    const fabric::strategies::AsyncSaveTimes t1 = h->times(), t2 = h2->times();
    std::printf("rank %d: staged %lld bytes (new %lld), then %lld (new %lld)\n",
                fabric.global_rank(), static_cast<long long>(t1.staged_bytes),
                static_cast<long long>(t1.allocated_bytes),
                static_cast<long long>(t2.staged_bytes),
                static_cast<long long>(t2.allocated_bytes));
    if (t2.allocated_bytes != 0 || t2.staged_bytes != t1.staged_bytes) {
      return Fail(absl::InternalError("the second save of the same state allocated buffers"));
    }
  } else if (mode == "losses") {
    if (!resume.empty()) {
      fabric::State state = run.state();
      auto rest = fabric.Load(resume, state);
      if (!rest.ok()) return Fail(rest.status());
      run.step = state["step"].value().as_int();
    }
    while (run.step < steps) {
      absl::StatusOr<float> loss = run.Step();
      if (!loss.ok()) return Fail(loss.status());
      fabric.Print(absl::StrFormat("loss %d %.9g", run.step, *loss));
      if (run.step % 2 == 0) {
        fabric::State state = run.state();
        CHECK_OK(fabric.SaveAsync(path(absl::StrCat("step-", run.step)), state).status());
      }
    }
  } else if (mode == "fail") {
    CHECK_OK(run.Step().status());
    fabric::State state = run.state();
    CHECK_OK(fabric.Save(path("good"), state));
    // The folder passes the save's up-front checks (it exists and is shared
    // by every rank, which is remembered), then becomes a file: only the
    // background write can find out.
    const std::string blocker = absl::StrCat(dir, "/not_a_dir");
    if (fabric.is_global_zero()) std::filesystem::create_directory(blocker);
    CHECK_OK(fabric.Barrier());
    CHECK_OK(fabric.Save(absl::StrCat(blocker, "/warm", ext), state));
    if (fabric.is_global_zero()) {
      std::filesystem::remove_all(blocker);
      std::ofstream(blocker) << "a file\n";
    }
    CHECK_OK(fabric.Barrier());
    const std::string bad = absl::StrCat(blocker, "/ckpt", ext);
    CHECK_OK(fabric.SaveAsync(bad, state).status());  // staged: OK
    CHECK_OK(run.Step().status());
    state = run.state();
    absl::StatusOr<fabric::SaveHandle> next = fabric.SaveAsync(path("next"), state);
    std::printf("rank %d: NEXT_SAVE %s\n", fabric.global_rank(),
                next.ok() ? "OK" : next.status().ToString().c_str());
    CHECK_OK(fabric.SaveAsync(bad, state).status());
    absl::Status finish = fabric.Finish();
    std::printf("rank %d: FINISH %s\n", fabric.global_rank(),
                finish.ok() ? "OK" : finish.ToString().c_str());
    std::fflush(stdout);
    return 0;
  } else if (mode == "budget") {
    // A staging budget too small for the state: every rank's SaveAsync fails
    // (also a DDP rank that stages nothing), nothing is written, and a
    // synchronous save still works.
    CHECK_OK(run.Step().status());
    fabric::State state = run.state();
    absl::StatusOr<fabric::SaveHandle> h = fabric.SaveAsync(path("over"), state);
    std::printf("rank %d: BUDGET %s\n", fabric.global_rank(),
                h.ok() ? "OK" : h.status().ToString().c_str());
    std::fflush(stdout);
    CHECK_OK(fabric.Save(path("sync"), state));
  } else if (mode == "kill") {
    CHECK_OK(run.Step().status());
    fabric::State state = run.state();
    CHECK_OK(fabric.SaveAsync(path("good"), state).status());
    CHECK_OK(fabric.WaitForSave());
    CHECK_OK(run.Step().status());
    state = run.state();
    CHECK_OK(fabric.SaveAsync(path("killed"), state).status());
    if (fabric.global_rank() == 1) _exit(3);  // dies with its save in flight
    const absl::Time t0 = absl::Now();
    absl::Status s = fabric.WaitForSave();
    std::printf("rank %d: KILL_WAIT %.1f s: %s\n", fabric.global_rank(),
                absl::ToDoubleSeconds(absl::Now() - t0), s.ToString().c_str());
    std::fflush(stdout);
    (void)fabric.Finish();
    _exit(0);  // the training group is broken: no orderly teardown
  } else {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--mode: unknown '", mode, "'")));
  }
  CHECK_OK(fabric.Finish());
  return 0;
}
