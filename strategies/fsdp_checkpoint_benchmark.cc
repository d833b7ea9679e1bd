// FSDP memory and checkpoint throughput on 2 ranks (Gloo), next to Python DCP
// on the same model in the same run:
//   bazel run -c opt //strategies:fsdp_checkpoint_benchmark -- --dir=/some/disk/dir
//
// Model: --layers Linear(--width, --width) layers, each its own FSDP unit,
// AdamW; the checkpoint (parameters + exp_avg + exp_avg_sq) is about
// 12 * P bytes (2.06 GiB with the defaults). Prints per rank: peak resident
// memory (VmHWM, reset between phases through /proc/self/clear_refs) against
// 16 * P / N (parameters, gradients and Adam state of a 1/N shard); --repeat
// sharded saves (every rank its part), each against raw O_DIRECT writes of the
// same bytes around it; --repeat sharded loads 2 -> 2, each as Fabric runs it
// and all through the page cache (FileReader's O_DIRECT reads off), against a
// raw read; a full save (rank 0 streams, one parameter gathered at a time);
// --repeat resharding loads (2 ranks -> one process) of four kinds, each
// against raw O_DIRECT reads of the same files around it; and
// Python's dcp.save / dcp.load of the same state with FSDP2.

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adamw.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "checkpoint/disk_reference.h"
#include "checkpoint/file_reader.h"
#include "strategies/fsdp.h"
#include "checkpoint/state.h"
#include "base/status_macros.h"
#include "checkpoint/load_options.h"
#include "checkpoint/state_snapshot.h"
#include "strategies/fsdp_checkpoint.h"
#include "strategies/launcher.h"
#include "strategies/process_group.h"

ABSL_FLAG(std::string, python, "", "Python interpreter with torch (empty: skip Python)");
ABSL_FLAG(std::string, script, "", "fsdp_checkpoint_benchmark.py");
ABSL_FLAG(std::string, dir, "/tmp/fsdp_checkpoint_benchmark", "scratch folder on the disk to test");
ABSL_FLAG(int, layers, 11, "Linear layers");
ABSL_FLAG(int, width, 4096, "layer width");
ABSL_FLAG(int, repeat, 3, "sharded saves and resharding loads to time (medians reported)");
ABSL_FLAG(bool, keep, false, "keep the checkpoints in --dir at the end");
ABSL_FLAG(std::string, reshard_only, "",
          "only the resharding loads, of this existing 2-rank sharded checkpoint (for profiling)");

namespace fabric::strategies {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int64_t StatusField(const char* field) {  // kB fields of /proc/self/status, in bytes
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(std::strlen(field) + 1)) * 1024;
  }
  return -1;
}
void ResetPeak() {
  std::ofstream("/proc/self/clear_refs") << "5";
}
double GiB(int64_t b) { return static_cast<double>(b) / (1 << 30); }
double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Stack : torch::nn::Module {
  Stack(int layers, int width) {
    for (int i = 0; i < layers; ++i) {
      linears.push_back(register_module(std::to_string(i), torch::nn::Linear(width, width)));
    }
  }
  at::Tensor forward(const at::Tensor& x, FullyShardedDataParallel& fsdp) {
    at::Tensor h = x;
    for (auto& l : linears) h = fsdp.Call(*l.ptr(), [&] { return l->forward(h); });
    return h;
  }
  std::vector<torch::nn::Linear> linears;
};

void Report(int rank, const std::string& what) {
  std::cout << absl::StrFormat("rank %d %-28s rss %6.2f GiB  peak %6.2f GiB\n", rank, what,
                               GiB(StatusField("VmRSS:")), GiB(StatusField("VmHWM:")))
            << std::flush;
}

// dd-style: every file of `dir` read with O_DIRECT in 16 MiB blocks, cold.
// Returns the bytes read and the seconds it took.
std::pair<double, double> RawReadFolder(const std::string& dir) {
  const size_t block = size_t{16} << 20;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, block) != 0) return {0, 0};
  DropPageCache(dir);
  double bytes = 0;
  auto t0 = Clock::now();
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_DIRECT);
    if (fd < 0) continue;
    ssize_t r;
    while ((r = ::read(fd, buf, block)) > 0) bytes += r;
    ::close(fd);
  }
  const double s = Seconds(t0);
  free(buf);
  return {bytes, s};
}

// sync, then 3 s without I/O, before the loads: on this virtual disk the
// first reads after gigabytes of writes are slow while the host flushes them,
// as torch_save_benchmark found. (Not always enough: the first load after the
// saves is also run uncounted.)
void Quiet() {
  ::sync();
  ::sleep(3);
}

// A new model and an optimizer without state, as a fresh process has.
struct FreshState {
  FreshState(int layers, int width)
      : model(std::make_shared<Stack>(layers, width)),
        opt(std::make_shared<torch::optim::AdamW>(model->parameters(),
                                                  torch::optim::AdamWOptions(1e-4))),
        state{{"model", model}, {"optimizer", opt}, {"step", 0}} {}
  std::shared_ptr<Stack> model;
  std::shared_ptr<torch::optim::AdamW> opt;
  State state;
};

// How a benchmark load runs: as Fabric::Load with its defaults, with the
// checksums alone, or with neither; kBuffered is kFabric with FileReader's
// O_DIRECT reads off (everything through the page cache). Indexes the
// per-kind figures.
enum LoadKind { kFabric, kChecksOnly, kNeither, kBuffered, kLoadKinds };

// A load as Fabric::Load runs it with its defaults (kFabric: checksums on,
// and all or nothing: the copy of the parameters taken on another thread
// while the optimizer state is read into new tensors, the load waiting for
// it before its first write into a parameter, the copy put back on
// failure), or with the checksums alone, or with neither. (Fabric also agrees on the outcome across ranks, one small
// collective, left out here.) `fsdp`: the wrapper of the state's module, or
// none (one process). `wait_s`: how long the load waited for the copy.
absl::StatusOr<Dict> FabricStyleLoad(const std::string& dir, State& state,
                                     FullyShardedDataParallel* fsdp, LoadKind kind,
                                     double* wait_s = nullptr) {
  FsdpCheckpointOptions options;
  const bool fabric = kind == kFabric || kind == kBuffered;
  options.load.verify_checksums = kind != kNeither;
  options.load.into_live_optimizer_buffers = !fabric;
  const FsdpWrapperOf wrapper_of = fsdp ? WrapperLookup({fsdp}) : FsdpWrapperOf();
  if (!fabric) return FsdpLoadCheckpoint(dir, state, wrapper_of, options);
  StateSnapshot::ParamsOf shards_of;
  if (fsdp != nullptr) {
    shards_of = [fsdp](torch::nn::Module& m) -> std::optional<std::vector<at::Tensor>> {
      if (&m == &fsdp->module()) return fsdp->parameters();
      return std::nullopt;
    };
  }
  FABRIC_ASSIGN_OR_RETURN(StateSnapshot snapshot,
                          StateSnapshot::Deferred(state, shards_of, options.load));
  absl::StatusOr<Dict> rest;
  {
    BackgroundCopies copies(&snapshot);
    options.load = copies.Gating(options.load);
    const std::function<absl::Status()> wait = options.load.before_live_writes;
    options.load.before_live_writes = [&wait, wait_s] {
      const auto t0 = Clock::now();
      absl::Status s = wait();
      if (wait_s) *wait_s = Seconds(t0);
      return s;
    };
    rest = FsdpLoadCheckpoint(dir, state, wrapper_of, options);
    (void)copies.Wait();
  }
  FABRIC_RETURN_IF_ERROR(RestoreOnFailure(snapshot, &state, rest.status()));
  return rest;
}

// CPU seconds (user + system) this process has used, all threads.
double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

// One resharding load of `dir` into a FreshState, run as `kind` says;
// returns its seconds. `cpu_s`: the CPU
// time it took (over 2 cores, a load that takes as much as twice its
// seconds has no core to spare).
double LoadOnce(const std::string& dir, int layers, int width, LoadKind kind,
                double* peak_gib = nullptr, double* wait_s = nullptr, double* cpu_s = nullptr) {
  FreshState fresh(layers, width);
  ResetPeak();
  const int64_t before = StatusField("VmRSS:");
  const double cpu0 = CpuSeconds();
  SetDirectReads(kind != kBuffered);
  auto t0 = Clock::now();
  auto loaded = FabricStyleLoad(dir, fresh.state, nullptr, kind, wait_s);
  const double s = Seconds(t0);
  SetDirectReads(true);
  if (cpu_s) *cpu_s = CpuSeconds() - cpu0;
  if (!loaded.ok()) std::cerr << loaded.status() << "\n";
  if (peak_gib) *peak_gib = GiB(StatusField("VmHWM:") - before);
  return s;
}

// A resharding load: the 2-rank sharded checkpoint into one process without
// FSDP (every chunk of both rank files is read, and the optimizer state is
// keyed back from names to indices). Each of `repeat` rounds loads cold once
// of each kind (rotating the order, so that none gains from it) and compares
// each with the mean of raw reads of the same files just before and just
// after; the medians are reported. Then from the page cache: the CPU cost of
// each part.
void ReshardingLoad(const std::string& dir, int layers, int width, int repeat) {
  std::vector<double> secs[kLoadKinds], ratios[kLoadKinds], raws, peaks;
  double bytes = 0;
  // Not counted: the first buffered reads after gigabytes of writes wait for
  // the host to flush them (one such load took 14 s against 2 s after it).
  Quiet();
  DropPageCache(dir);
  std::cout << absl::StrFormat("resharding: first load after the saves (not counted) %.2f s\n",
                               LoadOnce(dir, layers, width, kFabric));
  for (int r = 0; r < repeat; ++r) {
    Quiet();
    const auto [read_bytes, raw_before] = RawReadFolder(dir);
    bytes = read_bytes;
    double peak = 0, wait_s = 0, cpu[kLoadKinds] = {};
    for (int k = 0; k < kLoadKinds; ++k) {
      const LoadKind kind = static_cast<LoadKind>((k + r) % kLoadKinds);
      DropPageCache(dir);
      secs[kind].push_back(LoadOnce(dir, layers, width, kind, kind == kFabric ? &peak : nullptr,
                                    kind == kFabric ? &wait_s : nullptr, &cpu[kind]));
    }
    peaks.push_back(peak);
    raws.push_back((raw_before + RawReadFolder(dir).second) / 2);
    for (int k = 0; k < kLoadKinds; ++k) ratios[k].push_back(secs[k].back() / raws.back());
    std::cout << absl::StrFormat(
        "resharding load %d: %.2f s with checksums and all or nothing (waited %.2f s for its "
        "snapshot), %.2f s with checksums alone, %.2f s with neither, %.2f s as Fabric but all "
        "through the page cache; raw read %.2f s: %.2fx, %.2fx, %.2fx, %.2fx raw; CPU %.2f, "
        "%.2f, %.2f, %.2f s\n",
        r + 1, secs[kFabric].back(), wait_s, secs[kChecksOnly].back(), secs[kNeither].back(),
        secs[kBuffered].back(), raws.back(), ratios[kFabric].back(), ratios[kChecksOnly].back(),
        ratios[kNeither].back(), ratios[kBuffered].back(), cpu[kFabric], cpu[kChecksOnly],
        cpu[kNeither], cpu[kBuffered]);
  }
  const double load_s = Median(secs[kFabric]), neither_s = Median(secs[kNeither]);
  const double raw = Median(raws);
  std::cout << absl::StrFormat(
      "resharding load with checksums alone %.2f s (median %.2fx raw), with neither %.2f s "
      "(checks cost %+.1f%%)\n",
      Median(secs[kChecksOnly]), Median(ratios[kChecksOnly]), neither_s,
      100 * (Median(secs[kChecksOnly]) / neither_s - 1));
  std::cout << absl::StrFormat(
      "resharding load with checksums and all or nothing %.2f s, against neither %+.1f%%; "
      "all through the page cache %.2f s (median %.2fx raw)\n",
      load_s, 100 * (load_s / neither_s - 1), Median(secs[kBuffered]), Median(ratios[kBuffered]));
  std::cout << absl::StrFormat(
      "resharding load 2 -> 1 rank: %.2f GB in %.2f s (%.2f GB/s); raw O_DIRECT read of the same "
      "files %.2f s (%.2f GB/s); median of per-load ratios %.2fx raw; peak %.2f GiB above the "
      "model alone (its optimizer state is new: %.2f GiB)\n",
      bytes / 1e9, load_s, bytes / load_s / 1e9, raw, bytes / raw / 1e9, Median(ratios[kFabric]),
      Median(peaks), GiB(static_cast<int64_t>(bytes * 2 / 3)));
  // Warm: the files stay in the page cache (read once, then three loads of
  // each kind), so that only the CPU counts: what the checksums cost alone,
  // and what all or nothing adds (its copy competes for the same two cores).
  LoadOnce(dir, layers, width, kNeither);
  std::vector<double> warm[kLoadKinds];
  for (int r = 0; r < 3; ++r) {
    for (int k = 0; k < kLoadKinds; ++k) {
      warm[k].push_back(LoadOnce(dir, layers, width, static_cast<LoadKind>(k)));
    }
  }
  // What Fabric::Load adds to make a load all or nothing: the copy of the
  // parameters it takes before reading (StateSnapshot; the optimizer state is
  // read into new tensors and needs none), timed on the same model and
  // optimizer with state, as at a resume; beside it the copy of the whole
  // state a load into the live optimizer buffers would need.
  std::vector<double> snapshots, full_snapshots;
  uint64_t snapshot_bytes = 0, full_bytes = 0;
  {
    FreshState fresh(layers, width);
    State& state = fresh.state;
    auto loaded = FsdpLoadCheckpoint(dir, state, nullptr);
    if (!loaded.ok()) std::cerr << loaded.status() << "\n";
    LoadOptions into_new, into_live;
    into_new.into_live_optimizer_buffers = false;
    for (int r = 0; r < 3; ++r) {
      auto t0 = Clock::now();
      absl::StatusOr<StateSnapshot> snap = StateSnapshot::Of(state, {}, into_new);
      snapshots.push_back(Seconds(t0));
      if (snap.ok()) snapshot_bytes = snap->bytes();
      snap = absl::UnknownError("dropped");
      t0 = Clock::now();
      snap = StateSnapshot::Of(state, {}, into_live);
      full_snapshots.push_back(Seconds(t0));
      if (snap.ok()) full_bytes = snap->bytes();
    }
  }
  std::cout << absl::StrFormat(
      "all-or-nothing snapshot (Fabric::Load copies the parameters first): %.2f GB in %.2f s, "
      "%.0f%% of the cold checked load; a copy of the whole state would be %.2f GB in %.2f s\n",
      snapshot_bytes / 1e9, Median(snapshots), 100 * Median(snapshots) / load_s, full_bytes / 1e9,
      Median(full_snapshots));
  std::cout << absl::StrFormat(
      "resharding load from the page cache: %.2f s with neither, %.2f s with checksums alone "
      "(%+.1f%%), %.2f s with checksums and all or nothing (%+.1f%%, %.2f GB/s)\n",
      Median(warm[kNeither]), Median(warm[kChecksOnly]),
      100 * (Median(warm[kChecksOnly]) / Median(warm[kNeither]) - 1), Median(warm[kFabric]),
      100 * (Median(warm[kFabric]) / Median(warm[kNeither]) - 1),
      bytes / Median(warm[kFabric]) / 1e9);
}

int Run() {
  if (const std::string only = absl::GetFlag(FLAGS_reshard_only); !only.empty()) {
    ReshardingLoad(only, absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_width),
                   std::max(1, absl::GetFlag(FLAGS_repeat)));
    return 0;
  }
  LaunchOptions lo;
  lo.devices = 2;
  auto launcher = Launcher::Launch(lo);
  if (!launcher.ok()) {
    std::cerr << launcher.status() << "\n";
    return 1;
  }
  DistributedOptions dopt;
  dopt.backend = CommBackend::kGloo;
  auto ctx_or = DistributedContext::Create((*launcher)->cluster(), dopt);
  if (!ctx_or.ok()) {
    std::cerr << ctx_or.status() << "\n";
    return 1;
  }
  auto ctx = *ctx_or;
  const int rank = ctx->rank(), world = ctx->world_size();
  const std::string dir = absl::GetFlag(FLAGS_dir);
  std::filesystem::create_directories(dir);
  const int layers = absl::GetFlag(FLAGS_layers), width = absl::GetFlag(FLAGS_width);
  Report(rank, "runtime baseline");
  const int64_t baseline = StatusField("VmRSS:");

  auto model = std::make_shared<Stack>(layers, width);
  int64_t P = 0;
  for (const auto& p : model->parameters()) P += p.numel();
  FsdpOptions options;
  options.wrap_policy = WrapModuleTypes({"LinearImpl"});
  auto fsdp_or = FullyShardedDataParallel::Create(model, ctx, options);
  if (!fsdp_or.ok()) {
    std::cerr << fsdp_or.status() << "\n";
    return 1;
  }
  auto& fsdp = **fsdp_or;
  const int64_t unit_bytes = static_cast<int64_t>(width) * (width + 1) * 4;
  if (rank == 0) {
    std::cout << absl::StrFormat(
        "model: %d x Linear(%d, %d) = %.1f M parameters; checkpoint %.2f GiB; 16*P/N = %.2f GiB; "
        "one unit's full params+grads = %.2f GiB\n",
        layers, width, width, P / 1e6, GiB(12 * P), GiB(16 * P / world), GiB(2 * unit_bytes));
  }
  Report(rank, "after sharding");
  auto opt_ptr = std::make_shared<torch::optim::AdamW>(
      fsdp.parameters(), torch::optim::AdamWOptions(1e-4));
  torch::optim::AdamW& opt = *opt_ptr;
  ResetPeak();
  auto t0 = Clock::now();
  double fwd_s = 0, bwd_s = 0, opt_s = 0;
  for (int step = 0; step < 2; ++step) {
    opt.zero_grad();
    at::Tensor x = at::randn({4, width});
    auto t = Clock::now();
    at::Tensor loss = fsdp.Forward([&] { return model->forward(x, fsdp); }).square().mean();
    fwd_s += Seconds(t);
    t = Clock::now();
    loss.backward();
    bwd_s += Seconds(t);
    t = Clock::now();
    opt.step();
    opt_s += Seconds(t);
  }
  std::cout << absl::StrFormat("rank %d 2 steps: forward %.2f s, backward %.2f s, AdamW %.2f s\n",
                               rank, fwd_s, bwd_s, opt_s);
  const double train_s = Seconds(t0);
  Report(rank, "training (2 steps)");
  std::cout << absl::StrFormat(
      "rank %d training peak above baseline %.2f GiB vs 16*P/N + unit = %.2f GiB (%.1f s)\n", rank,
      GiB(StatusField("VmHWM:") - baseline), GiB(16 * P / world + 2 * unit_bytes), train_s);

  State state{{"model", fsdp.module_ptr()}, {"optimizer", opt_ptr}, {"step", 2}};
  // Sharded saves, each into a new folder (as versioned checkpoints are), each
  // compared with the mean of a raw write of the same bytes by rank 0 just
  // before and just after it; the median save and the median ratio are
  // reported, because this disk's speed moves a lot from minute to minute.
  const size_t ckpt_bytes = static_cast<size_t>(12 * P);
  const int repeat = std::max(1, absl::GetFlag(FLAGS_repeat));
  std::vector<double> save_times, raw_writes, ratios;
  std::string sharded;
  absl::Status s;
  ResetPeak();
  for (int r = 0; r < repeat; ++r) {
    if (rank == 0 && !sharded.empty()) std::filesystem::remove_all(sharded);  // outside the timing
    sharded = absl::StrCat(dir, "/cpp_sharded_", r);
    double raw = 0;
    if (rank == 0) raw = RawDirectWriteGBs(dir + "/raw.bin", ckpt_bytes) / 2;
    (void)ctx->Barrier();
    t0 = Clock::now();
    s = FsdpSaveCheckpoint(sharded, state, WrapperLookup({&fsdp}), ctx.get());
    save_times.push_back(Seconds(t0));
    (void)ctx->Barrier();
    if (rank == 0) {
      raw += RawDirectWriteGBs(dir + "/raw.bin", ckpt_bytes) / 2;
      raw_writes.push_back(raw);
      ratios.push_back(static_cast<double>(ckpt_bytes) / save_times.back() / 1e9 / raw);
      std::cout << absl::StrFormat("sharded save %d: %.2f s, raw write %.2f GB/s: %.0f%% of raw\n",
                                   r + 1, save_times.back(), raw, 100 * ratios.back());
    }
    if (!s.ok()) break;
  }
  const double save_s = Median(save_times), raw_write = Median(raw_writes);
  const double save_ratio = Median(ratios);
  if (!s.ok()) std::cerr << s << "\n";
  Report(rank, "sharded save");
  if (rank == 0) Quiet();
  // Sharded loads 2 -> 2, each cold; the median is reported.
  std::vector<double> sharded_loads, sharded_raws;
  {  // Not counted, as for the resharding loads below.
    (void)ctx->Barrier();
    if (rank == 0) DropPageCache(sharded);
    (void)ctx->Barrier();
    t0 = Clock::now();
    auto first = FabricStyleLoad(sharded, state, &fsdp, kFabric);
    (void)ctx->Barrier();
    if (!first.ok()) std::cerr << first.status() << "\n";
    if (rank == 0) {
      std::cout << absl::StrFormat("sharded: first load after the saves (not counted) %.2f s\n",
                                   Seconds(t0));
    }
  }
  ResetPeak();
  // Each round: the raw read, then the load as Fabric runs it and the same
  // load all through the page cache (direct reads off), in alternating order.
  std::vector<double> buffered_loads;
  for (int r = 0; r < repeat; ++r) {
    (void)ctx->Barrier();
    if (rank == 0) sharded_raws.push_back(RawReadFolder(sharded).second);
    double wait_s = 0;
    for (int pass = 0; pass < 2; ++pass) {
      const bool buffered = (pass + r) % 2 == 1;
      (void)ctx->Barrier();
      if (rank == 0) DropPageCache(sharded);
      (void)ctx->Barrier();
      SetDirectReads(!buffered);
      t0 = Clock::now();
      auto loaded = FabricStyleLoad(sharded, state, &fsdp, kFabric, buffered ? nullptr : &wait_s);
      (void)ctx->Barrier();
      SetDirectReads(true);
      (buffered ? buffered_loads : sharded_loads).push_back(Seconds(t0));
      if (!loaded.ok()) std::cerr << loaded.status() << "\n";
    }
    if (rank == 0) {
      std::cout << absl::StrFormat(
          "sharded load %d (2 -> 2, checked, all or nothing): %.2f s (waited %.2f s for its "
          "snapshot), all through the page cache %.2f s; raw read just before %.2f s: %.2fx, "
          "%.2fx raw\n",
          r + 1, sharded_loads.back(), wait_s, buffered_loads.back(), sharded_raws.back(),
          sharded_loads.back() / sharded_raws.back(), buffered_loads.back() / sharded_raws.back());
    }
  }
  if (rank == 0) {
    std::cout << absl::StrFormat("sharded load 2 -> 2 median %.2f s, all through the page cache %.2f s\n",
                                 Median(sharded_loads), Median(buffered_loads));
  }
  const double load_s = Median(sharded_loads);
  Report(rank, "sharded load");
  {  // The model alone (a third of the bytes), cold again.
    State model_only{{"model", fsdp.module_ptr()}};
    FsdpCheckpointOptions lenient;
    lenient.strict = false;
    (void)ctx->Barrier();
    if (rank == 0) DropPageCache(sharded);
    (void)ctx->Barrier();
    auto t1 = Clock::now();
    auto r = FsdpLoadCheckpoint(sharded, model_only, WrapperLookup({&fsdp}), lenient);
    if (!r.ok()) std::cerr << r.status() << "\n";
    std::cout << absl::StrFormat("rank %d sharded load of the model alone: %.2f s\n", rank,
                                 Seconds(t1));
  }

  const std::string full = dir + "/cpp_full.pt";
  FsdpCheckpointOptions fo;
  fo.state_dict_type = StateDictType::kFull;
  (void)ctx->Barrier();
  ResetPeak();
  const int64_t before_full = StatusField("VmRSS:");
  t0 = Clock::now();
  s = FsdpSaveCheckpoint(full, state, WrapperLookup({&fsdp}), ctx.get(), fo);
  const double full_s = Seconds(t0);
  if (!s.ok()) std::cerr << s << "\n";
  Report(rank, "full save");
  if (rank == 0) {
    std::cout << absl::StrFormat(
        "rank 0 full save peak above its shard state: %.2f GiB (bound: largest unit %.2f GiB + "
        "64 MiB)\n",
        GiB(StatusField("VmHWM:") - before_full), GiB(unit_bytes));
  }
  (void)ctx->Barrier();
  const double bytes = static_cast<double>(12 * P);
  if (rank == 0) {
    std::cout << absl::StrFormat(
        "C++ sharded save %.2f s (%.2f GB/s; median of per-save ratios %.0f%% of a raw O_DIRECT "
        "write of the same bytes, median raw %.2f GB/s); load %.2f s (%.2f GB/s); full save "
        "%.2f s (%.2f GB/s)\n",
        save_s, bytes / save_s / 1e9, 100 * save_ratio, raw_write, load_s,
        bytes / load_s / 1e9, full_s, bytes / full_s / 1e9);
  }
  (void)ctx->Barrier();
  model.reset();
  if (rank == 0) {
    (*launcher)->Finish(absl::Minutes(5)).IgnoreError();
    // The resharding loads run in a new process, as a resume does.
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    std::fflush(stdout);
    const int rc = std::system(absl::StrCat(self, " --reshard_only=", sharded, " --repeat=", repeat,
                                            " --layers=", layers, " --width=", width)
                                   .c_str());
    if (rc != 0) std::cerr << "resharding loads: exit status " << rc << "\n";
    const std::string python = absl::GetFlag(FLAGS_python);
    if (!python.empty()) {
      const std::string cmd = absl::StrCat(python, " ", absl::GetFlag(FLAGS_script), " ", dir,
                                           "/py_sharded ", layers, " ", width, " ", repeat, " 2>/dev/null");
      FILE* p = ::popen(cmd.c_str(), "r");
      char line[256];
      double py_save = 0, py_load = 0;
      while (p != nullptr && std::fgets(line, sizeof(line), p) != nullptr) {
        std::sscanf(line, "py_save_s=%lf", &py_save);
        std::sscanf(line, "py_load_s=%lf", &py_load);
        std::cout << "  " << line;
      }
      if (p != nullptr) ::pclose(p);
      if (py_save > 0 && py_load > 0) {
        std::cout << absl::StrFormat(
            "Python DCP (FSDP2, 2 ranks) save %.2f s (%.2f GB/s), load %.2f s (%.2f GB/s)\n",
            py_save, bytes / py_save / 1e9, py_load, bytes / py_load / 1e9);
      }
    }
    if (!absl::GetFlag(FLAGS_keep)) std::filesystem::remove_all(dir);
  }
  return 0;
}

}  // namespace
}  // namespace fabric::strategies

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return fabric::strategies::Run();
}
