// The process group: rendezvous, tensor collectives, the watch thread and the
// failure diagnosis (byte and status collectives: process_group_bytes.cc).
#include "strategies/process_group.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef FABRIC_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "strategies/sockets.h"

namespace fabric::strategies {
namespace {

std::chrono::milliseconds ToChrono(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

// The message of an exception from c10d or Gloo, without LibTorch's C++
// backtrace.
std::string ExceptionMessage(const std::exception& e) {
  std::string text;
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    text = c10_error->what_without_backtrace();
  } else {
    text = e.what();
  }
  size_t trace = text.find("\nException raised from");
  if (trace != std::string::npos) text.resize(trace);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.size() > 600) text = text.substr(0, 600) + "...";
  return text;
}

c10d::ReduceOp ToC10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:  // Gloo has no AVG everywhere: SUM, then divide.
      return c10d::ReduceOp::SUM;
    case ReduceOp::kMin:
      return c10d::ReduceOp::MIN;
    case ReduceOp::kMax:
      return c10d::ReduceOp::MAX;
  }
  return c10d::ReduceOp::SUM;
}

absl::string_view OpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kMax:
      return "max";
  }
  return "?";
}

std::string DescribeTensor(const at::Tensor& t) {
  return absl::StrCat(HumanBytes(t.numel() * static_cast<int64_t>(t.element_size())), " (",
                      c10::getDtypeNames(t.scalar_type()).first, "[",
                      absl::StrJoin(t.sizes(), ","), "])");
}

struct Arrival {
  int64_t seq = -1;
  std::string what;
};

}  // namespace

std::string HumanBytes(int64_t bytes) {
  constexpr int64_t kKiB = 1024, kMiB = kKiB * 1024, kGiB = kMiB * 1024;
  auto fmt = [](double v, const char* unit) {
    std::string s = absl::StrFormat("%.1f", v);
    if (absl::EndsWith(s, ".0")) s.resize(s.size() - 2);
    return absl::StrCat(s, " ", unit);
  };
  if (bytes >= kGiB) return fmt(static_cast<double>(bytes) / kGiB, "GiB");
  if (bytes >= kMiB) return fmt(static_cast<double>(bytes) / kMiB, "MiB");
  if (bytes >= kKiB) return fmt(static_cast<double>(bytes) / kKiB, "KiB");
  return absl::StrCat(bytes, " B");
}

struct DistributedContext::Impl {
  ClusterEnvironment cluster;
  DistributedOptions options;
  c10::Device device{c10::kCPU};
  std::string backend_name;
  c10::intrusive_ptr<c10d::Store> store;         // TCPStore, rank 0 hosts it.
  c10::intrusive_ptr<c10d::Store> fabric_store;  // Our keys: progress records.
  std::string prefix;     // Of our keys in the store: "fabric/<restart_count>".
  bool subgroup = false;  // Made by NewGroup: no watch thread, no closing handshake.
  c10::intrusive_ptr<c10d::Backend> backend;

  std::mutex mu;
  int64_t seq = 0;
  absl::Status broken;  // First failed collective: the group is unusable.

  // The watch thread's own store connection (heartbeats, failure reports).
  c10::intrusive_ptr<c10d::Store> watch_store;
  std::mutex watch_mu;  // watch_store
  std::thread watch_thread;
  std::atomic<bool> stop_watch{false};
  mutable std::mutex failure_mu;
  std::string peer_failure;  // First failure reported or seen; guarded by failure_mu.

  std::string BeatKey(int rank) const { return absl::StrCat("beat/", rank); }
  std::string AckKey(int rank) const { return absl::StrCat("ack/", rank); }

  void RecordFailure(const std::string& failure) {
    std::lock_guard<std::mutex> lock(failure_mu);
    if (peer_failure.empty()) peer_failure = failure;
  }
  std::string Failure() const {
    std::lock_guard<std::mutex> lock(failure_mu);
    return peer_failure;
  }

  // The failure any launcher reported to the store, or "".
  std::string ReportedFailure() {
    try {
      std::lock_guard<std::mutex> lock(watch_mu);
      if (!watch_store || !watch_store->check({"failed"})) return "";
      std::vector<uint8_t> raw = watch_store->get("failed");
      return std::string(raw.begin(), raw.end());
    } catch (const std::exception&) {
      return "";
    }
  }

  // Every rank's heartbeat count; -1 where unreadable.
  std::vector<int64_t> ReadBeats() {
    std::vector<int64_t> beats(cluster.world_size, -1);
    try {
      std::lock_guard<std::mutex> lock(watch_mu);
      for (int r = 0; r < cluster.world_size && watch_store; ++r) {
        beats[r] = watch_store->add(BeatKey(r), 0);
      }
    } catch (const std::exception&) {
    }
    return beats;
  }

  void Watch();

  std::string StoreAddress() const {
    return absl::StrCat(cluster.master_addr, ":", cluster.master_port);
  }

  std::string ProgressKey(int rank) const { return absl::StrCat("progress/", rank); }

  // What each rank last started, from the store; nullopt where unreadable.
  std::vector<std::optional<Arrival>> ReadProgress(std::string* store_error) {
    std::vector<std::optional<Arrival>> out(cluster.world_size);
    for (int r = 0; r < cluster.world_size; ++r) {
      try {
        if (!fabric_store->check({ProgressKey(r)})) continue;
        std::vector<uint8_t> raw = fabric_store->get(ProgressKey(r));
        std::string text(raw.begin(), raw.end());
        std::pair<std::string, std::string> parts = absl::StrSplit(text, absl::MaxSplits(' ', 1));
        Arrival a;
        if (absl::SimpleAtoi(parts.first, &a.seq)) {
          a.what = parts.second;
          out[r] = a;
        }
      } catch (const std::exception& e) {
        *store_error = ExceptionMessage(e);
        break;
      }
    }
    return out;
  }

  // Turns a failed collective into an error that names the rank at fault:
  // the one a launcher reported (ReportFailure), else those whose heartbeat
  // stopped, else those that had not started the collective.
  absl::Status Diagnose(int64_t my_seq, const std::string& what, const std::string& error) {
    const bool timed_out = error.find("imed out") != std::string::npos ||
                           error.find("imeout") != std::string::npos;
    std::string store_error;
    std::vector<int> behind;
    std::vector<std::optional<Arrival>> progress;
    const std::vector<int64_t> beats_before = ReadBeats();
    // Peers that saw the failure a bit later may still be catching up, and a
    // dead rank's launcher needs a moment to report it; stopped heartbeats
    // take a few intervals to show.
    const absl::Duration window =
        timed_out ? absl::ZeroDuration()
                  : std::max(options.diagnosis_grace, 4 * options.heartbeat_interval);
    const absl::Time settle = absl::Now() + window;
    std::string reported;
    do {
      store_error.clear();
      reported = ReportedFailure();
      if (reported.empty()) reported = Failure();
      progress = ReadProgress(&store_error);
      behind.clear();
      for (int r = 0; r < cluster.world_size; ++r) {
        if (r == cluster.rank) continue;
        if (!progress[r].has_value() || progress[r]->seq < my_seq) behind.push_back(r);
      }
      if (!reported.empty() || !store_error.empty() || absl::Now() >= settle) break;
      absl::SleepFor(absl::Milliseconds(50));
    } while (true);
    std::vector<int> stopped;
    if (reported.empty() && store_error.empty() && !timed_out) {
      const std::vector<int64_t> beats_after = ReadBeats();
      for (int r = 0; r < cluster.world_size; ++r) {
        if (r != cluster.rank && beats_after[r] >= 0 && beats_after[r] == beats_before[r]) {
          stopped.push_back(r);
        }
      }
    }

    std::string waiting;
    if (!behind.empty()) {
      std::vector<std::string> names;
      for (int r : behind) {
        if (progress[r].has_value()) {
          names.push_back(absl::StrCat("rank ", r, " (last seen at #", progress[r]->seq, " ",
                                       progress[r]->what, ")"));
        } else {
          names.push_back(absl::StrCat("rank ", r, " (never seen)"));
        }
      }
      waiting = absl::StrCat("waiting for ", absl::StrJoin(names, ", "));
    }
    std::string where;
    if (!store_error.empty()) {
      where = absl::StrCat(" (cannot read the ranks' progress from the TCPStore at ",
                           StoreAddress(), " hosted by rank 0, which has probably exited: ",
                           store_error, ")");
    } else if (!reported.empty() || !stopped.empty()) {
      where = !reported.empty()
                  ? absl::StrCat(" because ", reported)
                  : absl::StrCat(" because rank(s) ", DescribeRanks(cluster, stopped),
                                 " stopped: no heartbeat for ", absl::FormatDuration(window),
                                 " (the process died, or its node is unreachable)");
      if (!waiting.empty()) absl::StrAppend(&where, "; ", waiting);
    } else if (!waiting.empty()) {
      where = " " + waiting;
    } else {
      where = " (every rank had started it: a peer's connection was lost)";
    }
    std::string head = absl::StrCat("rank ", cluster.rank, ": ", what, " (collective #",
                                    my_seq, ") ");
    if (timed_out) {
      return absl::DeadlineExceededError(absl::StrCat(
          head, "timed out after ", absl::FormatDuration(options.timeout), where, ": ", error));
    }
    return absl::UnavailableError(absl::StrCat(head, "failed", where, ": ", error));
  }

  absl::Status CheckUsable() {
    std::lock_guard<std::mutex> lock(mu);
    if (!broken.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "rank ", cluster.rank, ": the ", backend_name,
          " process group is unusable after an earlier failure: ", broken.message()));
    }
    return absl::OkStatus();
  }

  absl::Status MarkBroken(absl::Status status) {
    std::lock_guard<std::mutex> lock(mu);
    if (broken.ok()) broken = status;
    return status;
  }

  absl::Status CheckTensor(const at::Tensor& t, absl::string_view what) const {
    if (!t.defined()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": the tensor is undefined"));
    }
    if (t.device() != device) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": the tensor is on ", t.device().str(), " but the ", backend_name,
          " process group of rank ", cluster.rank, " communicates tensors on ", device.str()));
    }
    if (!t.is_contiguous() || t.is_sparse()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": the tensor must be dense and contiguous"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::shared_ptr<PendingCollective::State>> Start(
      std::string what, const std::function<c10::intrusive_ptr<c10d::Work>()>& start,
      std::function<void()> then);
};

struct PendingCollective::State {
  DistributedContext::Impl* impl = nullptr;
  c10::intrusive_ptr<c10d::Work> work;
  int64_t seq = 0;
  std::string what;
  std::function<void()> then;
  bool done = false;
  absl::Status status;
};

absl::StatusOr<std::shared_ptr<PendingCollective::State>> DistributedContext::Impl::Start(
    std::string what, const std::function<c10::intrusive_ptr<c10d::Work>()>& start,
    std::function<void()> then) {
  FABRIC_RETURN_IF_ERROR(CheckUsable());
  auto state = std::make_shared<PendingCollective::State>();
  state->impl = this;
  state->what = std::move(what);
  state->then = std::move(then);
  {
    std::lock_guard<std::mutex> lock(mu);
    state->seq = ++seq;
  }
  // Progress record: lets the survivors of a failure name the rank that
  // never arrived. One small store write per collective.
  try {
    std::string record = absl::StrCat(state->seq, " ", state->what);
    fabric_store->set(ProgressKey(cluster.rank), std::vector<uint8_t>(record.begin(), record.end()));
  } catch (const std::exception& e) {
    return MarkBroken(absl::UnavailableError(absl::StrCat(
        "rank ", cluster.rank, ": ", state->what, " (collective #", state->seq,
        "): cannot reach the TCPStore at ", StoreAddress(),
        " hosted by rank 0, which has probably exited: ", ExceptionMessage(e))));
  }
  try {
    state->work = start();
  } catch (const std::exception& e) {
    // Rejected before anything was sent (bad dtype, shape...): the caller's
    // mistake, but the other ranks went ahead, so the group cannot be used.
    return MarkBroken(absl::InvalidArgumentError(absl::StrCat(
        "rank ", cluster.rank, ": ", state->what, " (collective #", state->seq,
        ") was rejected by ", backend_name, ": ", ExceptionMessage(e))));
  }
  return state;
}

absl::Status PendingCollective::Wait() {
  if (state_ == nullptr) return absl::FailedPreconditionError("no collective to wait for");
  State& s = *state_;
  if (s.done) return s.status;
  s.done = true;
  try {
    // Gloo fails the work itself after the timeout; the margin only guards
    // against a backend that does not.
    s.work->wait(ToChrono(s.impl->options.timeout + absl::Seconds(10)));
  } catch (const std::exception& e) {
    s.status = s.impl->MarkBroken(s.impl->Diagnose(s.seq, s.what, ExceptionMessage(e)));
    return s.status;
  }
  if (s.then) {
    try {
      s.then();
    } catch (const std::exception& e) {
      s.status = absl::InternalError(
          absl::StrCat(s.what, ": post-processing failed: ", ExceptionMessage(e)));
    }
  }
  s.work.reset();
  return s.status;
}

void DistributedContext::Impl::Watch() {
  const std::string beat = BeatKey(cluster.rank);
  absl::Time exit_at = absl::InfiniteFuture();
  while (!stop_watch.load()) {
    std::string failure;
    bool closing = false;
    try {
      std::lock_guard<std::mutex> lock(watch_mu);
      watch_store->add(beat, 1);
      closing = watch_store->check({"closing"});
      if (!closing && watch_store->check({"failed"})) {
        std::vector<uint8_t> raw = watch_store->get("failed");
        failure.assign(raw.begin(), raw.end());
      }
    } catch (const std::exception& e) {
      failure = absl::StrCat("the TCPStore at ", StoreAddress(),
                             " hosted by rank 0 is gone (rank 0 exited, or its node is "
                             "unreachable): ", ExceptionMessage(e));
    }
    if (closing) {
      // Rank 0 is finishing normally: say we saw it, so it can close the store.
      try {
        std::lock_guard<std::mutex> lock(watch_mu);
        watch_store->set(AckKey(cluster.rank), std::vector<uint8_t>{'1'});
      } catch (const std::exception&) {
      }
      return;
    }
    if (failure.empty()) failure = Failure();  // This rank's own failed collective.
    if (!failure.empty()) {
      RecordFailure(failure);
      if (options.exit_on_peer_failure) {
        if (exit_at == absl::InfiniteFuture()) {
          exit_at = absl::Now() + options.failure_exit_grace;
        } else if (absl::Now() >= exit_at) {
          std::fprintf(stderr, "fabric: rank %d: ending this process: %s\n", cluster.rank,
                       Failure().c_str());
          std::fflush(stderr);
          _exit(1);
        }
      }
    }
    const absl::Time wake = absl::Now() + options.heartbeat_interval;
    while (!stop_watch.load() && absl::Now() < wake) absl::SleepFor(absl::Milliseconds(10));
  }
}

DistributedContext::DistributedContext(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DistributedContext::~DistributedContext() {
  if (!impl_) return;
  Impl& impl = *impl_;
  const bool clean = impl.broken.ok() && impl.Failure().empty();
  if (clean || !impl.options.exit_on_peer_failure) {
    impl.stop_watch = true;
    if (impl.watch_thread.joinable()) impl.watch_thread.join();
  } else {
    // A failed run: the backend's shutdown below may block on a dead peer;
    // the watch thread still ends the process in that case.
    impl.RecordFailure(impl.broken.ok() ? impl.Failure() : std::string(impl.broken.message()));
  }
  // Rank 0 hosts the store: before closing it, let every rank's watch thread
  // see that this is the normal end (not a dead rank 0), briefly.
  try {
    if (impl.watch_store && clean && !impl.subgroup) {
      std::lock_guard<std::mutex> lock(impl.watch_mu);
      if (impl.cluster.rank == 0 && !impl.cluster.external_store) {
        impl.watch_store->set("closing", std::vector<uint8_t>{'1'});
        std::vector<std::string> acks;
        for (int r = 1; r < impl.cluster.world_size; ++r) acks.push_back(impl.AckKey(r));
        if (!acks.empty()) impl.watch_store->wait(acks, std::chrono::seconds(3));
      } else {
        impl.watch_store->set(impl.AckKey(impl.cluster.rank), std::vector<uint8_t>{'1'});
      }
    }
  } catch (const std::exception&) {
  }
  // The backend talks through the store: end it first. NCCL wants an
  // explicit shutdown (abort after a failure, which must not block).
  if (impl.backend) {
    try {
      if (impl.broken.ok()) {
        impl.backend->shutdown();
      } else {
        impl.backend->abort();
      }
    } catch (const std::exception&) {
    }
  }
  impl.backend.reset();
  impl.stop_watch = true;
  if (impl.watch_thread.joinable()) impl.watch_thread.join();
  impl.watch_store.reset();
  impl.fabric_store.reset();
  impl.store.reset();
}

void DistributedContext::ReportFailure(const std::string& failure) {
  Impl& impl = *impl_;
  impl.RecordFailure(failure);
  try {
    std::lock_guard<std::mutex> lock(impl.watch_mu);
    if (!impl.watch_store) return;
    // First report wins: it is the cause, later ones are its consequences.
    if (impl.watch_store->add("failed_count", 1) == 1) {
      impl.watch_store->set("failed", std::vector<uint8_t>(failure.begin(), failure.end()));
    }
  } catch (const std::exception&) {
  }
}

std::string DistributedContext::PeerFailure() const {
  std::string reported = impl_->ReportedFailure();
  return reported.empty() ? impl_->Failure() : reported;
}

const ClusterEnvironment& DistributedContext::cluster() const { return impl_->cluster; }
std::string DistributedContext::backend_name() const { return impl_->backend_name; }
c10::Device DistributedContext::device() const { return impl_->device; }
absl::Duration DistributedContext::timeout() const { return impl_->options.timeout; }

absl::StatusOr<std::shared_ptr<DistributedContext>> DistributedContext::Create(
    const ClusterEnvironment& cluster, const DistributedOptions& options) {
  if (cluster.world_size < 1 || cluster.rank < 0 || cluster.rank >= cluster.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid cluster: rank ", cluster.rank, " of world_size ", cluster.world_size));
  }
  if (cluster.master_port < 1 || cluster.master_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid cluster: master_port ", cluster.master_port,
        " (start the processes through the Launcher, or set MASTER_PORT)"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("DistributedOptions.timeout must be positive");
  }
  if (options.rendezvous_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("DistributedOptions.rendezvous_timeout must not be negative");
  }
  const absl::Duration rendezvous_timeout = options.rendezvous_timeout > absl::ZeroDuration()
                                                ? options.rendezvous_timeout
                                                : options.timeout;
  IgnoreSigpipeUnlessHandled();  // A dead peer fails a collective, not this process.
  auto impl = std::make_unique<Impl>();
  impl->cluster = cluster;
  impl->options = options;

  CommBackend backend = options.backend;
#ifdef FABRIC_WITH_CUDA
  if (backend == CommBackend::kAuto) {
    backend = at::hasCUDA() && c10::cuda::device_count() > 0 ? CommBackend::kNccl
                                                             : CommBackend::kGloo;
  }
#else
  if (backend == CommBackend::kAuto) backend = CommBackend::kGloo;
  if (backend == CommBackend::kNccl) {
    return absl::UnimplementedError(
        "the NCCL backend needs a CUDA build of fabric_cpp (bazel build --config=cuda)");
  }
#endif
  impl->backend_name = backend == CommBackend::kNccl ? "nccl" : "gloo";
  const std::string address = impl->StoreAddress();
  const std::string who = absl::StrCat("rank ", cluster.rank, ": ");

  // Rendezvous: rank 0 hosts the TCPStore, the others connect (retrying
  // until the timeout while rank 0 is not up yet).
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(cluster.master_port);
  // Under torchrun's agent store every rank is a client.
  const bool host = cluster.rank == 0 && !cluster.external_store;
  store_options.isServer = host;
  store_options.numWorkers = cluster.world_size;
  store_options.waitWorkers = false;  // We wait below, naming who is missing.
  store_options.timeout = ToChrono(rendezvous_timeout);
  const std::string prefix = absl::StrCat("fabric/", cluster.restart_count);
  try {
    impl->store = c10::make_intrusive<c10d::TCPStore>(cluster.master_addr, store_options);
    impl->store->setTimeout(ToChrono(options.timeout));
    c10d::TCPStoreOptions watch_options = store_options;
    watch_options.isServer = false;
    watch_options.timeout = ToChrono(std::max(absl::Seconds(5), 10 * options.heartbeat_interval));
    impl->watch_store = c10::make_intrusive<c10d::PrefixStore>(
        prefix, c10::make_intrusive<c10d::TCPStore>(cluster.master_addr, watch_options));
  } catch (const std::exception& e) {
    std::string missing;
    if (!host && !cluster.external_store) {
      missing = absl::StrCat(": rank 0 (node 0",
                             cluster.local_world_size > 1 && cluster.num_nodes > 1
                                 ? absl::StrCat(", ranks 0..", cluster.local_world_size - 1)
                                 : std::string(),
                             ") has not started the rendezvous");
    }
    return absl::UnavailableError(absl::StrCat(
        who,
        host ? absl::StrCat("cannot host the TCPStore on ", address)
             : absl::StrCat("cannot connect to the TCPStore ",
                            cluster.external_store ? "of torchrun's agent" : "of rank 0", " at ",
                            address, " within ", absl::FormatDuration(rendezvous_timeout), missing),
        " (", ExceptionMessage(e), ")"));
  }
  impl->prefix = prefix;
  return Connect(std::move(impl), backend, rendezvous_timeout);
}

absl::StatusOr<std::shared_ptr<DistributedContext>> DistributedContext::NewGroup(
    const std::string& name) {
  const Impl& parent = *impl_;
  auto impl = std::make_unique<Impl>();
  impl->cluster = parent.cluster;
  impl->options = parent.options;
  impl->backend_name = "gloo";
  impl->prefix = parent.prefix;
  impl->subgroup = true;
  // Connections of its own to the same TCPStore (the group is used from
  // another thread than its parent). Its keys live under a prefix of their
  // own, so its rendezvous, progress records and Gloo pairs never meet the
  // parent's; it reads the parent's heartbeats and failure reports to name a
  // dead rank, but runs no watch thread of its own.
  try {
    c10d::TCPStoreOptions client;
    client.port = static_cast<uint16_t>(parent.cluster.master_port);
    client.isServer = false;
    client.numWorkers = parent.cluster.world_size;
    client.waitWorkers = false;
    client.timeout = ToChrono(parent.options.timeout);
    impl->store = c10::make_intrusive<c10d::PrefixStore>(
        absl::StrCat("group/", name),
        c10::make_intrusive<c10d::TCPStore>(parent.cluster.master_addr, client));
    client.timeout =
        ToChrono(std::max(absl::Seconds(5), 10 * parent.options.heartbeat_interval));
    impl->watch_store = c10::make_intrusive<c10d::PrefixStore>(
        parent.prefix, c10::make_intrusive<c10d::TCPStore>(parent.cluster.master_addr, client));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "rank ", parent.cluster.rank, ": cannot connect the '", name,
        "' process group to the TCPStore at ", parent.StoreAddress(), ": ", ExceptionMessage(e)));
  }
  return Connect(std::move(impl), CommBackend::kGloo, parent.options.timeout);
}

absl::StatusOr<std::shared_ptr<DistributedContext>> DistributedContext::Connect(
    std::unique_ptr<Impl> impl, CommBackend backend, absl::Duration rendezvous_timeout) {
  const ClusterEnvironment& cluster = impl->cluster;
  const DistributedOptions& options = impl->options;
  const std::string address = impl->StoreAddress();
  const std::string who = absl::StrCat("rank ", cluster.rank, ": ");
  impl->fabric_store = c10::make_intrusive<c10d::PrefixStore>(impl->prefix, impl->store);

  std::vector<std::string> keys;
  for (int r = 0; r < cluster.world_size; ++r) keys.push_back(impl->ProgressKey(r));
  try {
    std::string record = "0 rendezvous";
    impl->fabric_store->set(impl->ProgressKey(cluster.rank),
                            std::vector<uint8_t>(record.begin(), record.end()));
    impl->fabric_store->wait(keys, ToChrono(rendezvous_timeout));
  } catch (const std::exception& e) {
    std::vector<int> missing;
    std::string store_error;
    try {
      for (int r = 0; r < cluster.world_size; ++r) {
        if (!impl->fabric_store->check({keys[r]})) missing.push_back(r);
      }
    } catch (const std::exception& check_error) {
      store_error = absl::StrCat("; cannot ask the TCPStore of rank 0 who is missing: ",
                                 ExceptionMessage(check_error));
    }
    // Rank 0 hosts the store: it stays up until every rank that did arrive
    // has asked who is missing (their timeouts end up to a few seconds after
    // ours, by how much later they started), at most 5 s.
    try {
      if (cluster.rank == 0) {
        std::vector<std::string> asked;
        for (int r = 1; r < cluster.world_size; ++r) {
          if (std::find(missing.begin(), missing.end(), r) == missing.end()) {
            asked.push_back(absl::StrCat("diagnosed/", r));
          }
        }
        if (!asked.empty()) {
          impl->fabric_store->wait(asked, ToChrono(std::max(options.diagnosis_grace,
                                                            absl::Seconds(5))));
        }
      } else if (store_error.empty()) {
        impl->fabric_store->set(absl::StrCat("diagnosed/", cluster.rank), std::vector<uint8_t>{1});
      }
    } catch (const std::exception&) {
      // A rank that never asks (it died) ends the wait at its timeout.
    }
    std::string nodes;
    if (!missing.empty() && cluster.num_nodes > 1) {
      const std::string named = DescribeRanks(cluster, missing);
      nodes = named.substr(absl::StrJoin(missing, ", ").size());
    }
    return absl::DeadlineExceededError(absl::StrCat(
        who, "rendezvous at ", address, " failed after ", absl::FormatDuration(rendezvous_timeout),
        missing.empty() ? std::string()
                        : absl::StrCat(": rank(s) ", absl::StrJoin(missing, ", "),
                                       " of world_size ", cluster.world_size, " never joined",
                                       nodes),
        " (", ExceptionMessage(e), store_error, ")"));
  }

  try {
    if (backend == CommBackend::kNccl) {
#ifdef FABRIC_WITH_CUDA
      if (cluster.local_rank >= c10::cuda::device_count()) {
        return absl::FailedPreconditionError(absl::StrCat(
            who, "local rank ", cluster.local_rank, " has no GPU: only ",
            static_cast<int>(c10::cuda::device_count()), " visible"));
      }
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(cluster.local_rank));
      impl->device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(cluster.local_rank));
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = ToChrono(options.timeout);
      impl->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("nccl/", cluster.restart_count),
                                                 impl->store),
          cluster.rank,
          cluster.world_size, nccl_options);
#endif
    } else {
      auto gloo_options = c10d::ProcessGroupGloo::Options::create(ToChrono(options.timeout));
      // On one machine stay on loopback: the hostname may not resolve (or
      // resolve to an unreachable address) inside containers and sandboxes.
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
        gloo_options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (IsLoopback(cluster.master_addr)) {
        gloo_options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else if (const std::string local = LocalAddressFor(cluster.master_addr, cluster.master_port);
                 !local.empty() && !IsLoopback(local)) {
        // The interface that reaches node 0 (the hostname may resolve to
        // another one, or to nothing, inside containers and namespaces).
        gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(local));
      } else {
        gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      gloo_options->threads = std::max(1, options.gloo_threads);
      impl->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("gloo/", cluster.restart_count),
                                                 impl->store),
          cluster.rank,
          cluster.world_size, gloo_options);
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(who, "cannot create the ", impl->backend_name,
                                               " process group (world_size ",
                                               cluster.world_size, "): ", ExceptionMessage(e)));
  }
  if (!impl->subgroup) {
    Impl* watched = impl.get();
    impl->watch_thread = std::thread([watched] { watched->Watch(); });
  }
  return std::shared_ptr<DistributedContext>(new DistributedContext(std::move(impl)));
}

absl::Status DistributedContext::Barrier() {
  Impl& impl = *impl_;
  FABRIC_ASSIGN_OR_RETURN(auto state, impl.Start("barrier", [&] {
    c10d::BarrierOptions opts;
    if (impl.device.is_cuda()) {
      opts.device_ids = {impl.device.index()};
      opts.device = impl.device;
    }
    return impl.backend->barrier(opts);
  }, nullptr));
  return PendingCollective(state).Wait();
}

absl::Status DistributedContext::Broadcast(at::Tensor& tensor, int root) {
  Impl& impl = *impl_;
  std::string what = absl::StrCat("broadcast from rank ", root, " of ");
  FABRIC_RETURN_IF_ERROR(impl.CheckTensor(tensor, what + "a tensor"));
  if (root < 0 || root >= world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("broadcast: root rank ", root, " is not in [0, ", world_size(), ")"));
  }
  absl::StrAppend(&what, DescribeTensor(tensor));
  FABRIC_ASSIGN_OR_RETURN(auto state, impl.Start(what, [&] {
    std::vector<at::Tensor> tensors = {tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = ToChrono(impl.options.timeout);
    return impl.backend->broadcast(tensors, opts);
  }, nullptr));
  return PendingCollective(state).Wait();
}

absl::StatusOr<PendingCollective> DistributedContext::AllReduceAsync(at::Tensor tensor,
                                                                     ReduceOp op) {
  Impl& impl = *impl_;
  std::string what = absl::StrCat("all_reduce(", OpName(op), ") of ");
  FABRIC_RETURN_IF_ERROR(impl.CheckTensor(tensor, what + "a tensor"));
  if (op == ReduceOp::kAvg && !at::isFloatingType(tensor.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "all_reduce(avg) needs a floating-point tensor, got ",
        c10::getDtypeNames(tensor.scalar_type()).first));
  }
  absl::StrAppend(&what, DescribeTensor(tensor));
  std::function<void()> then;
  if (op == ReduceOp::kAvg) {
    const int world = world_size();
    then = [tensor, world]() mutable { tensor.div_(world); };
  }
  FABRIC_ASSIGN_OR_RETURN(auto state, impl.Start(what, [&] {
    std::vector<at::Tensor> tensors = {tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = ToC10d(op);
    opts.timeout = ToChrono(impl.options.timeout);
    return impl.backend->allreduce(tensors, opts);
  }, std::move(then)));
  return PendingCollective(state);
}

absl::Status DistributedContext::AllReduce(at::Tensor& tensor, ReduceOp op) {
  FABRIC_ASSIGN_OR_RETURN(PendingCollective pending, AllReduceAsync(tensor, op));
  return pending.Wait();
}

absl::StatusOr<std::vector<at::Tensor>> DistributedContext::AllGather(const at::Tensor& tensor) {
  Impl& impl = *impl_;
  std::string what = "all_gather of ";
  FABRIC_RETURN_IF_ERROR(impl.CheckTensor(tensor, what + "a tensor"));
  absl::StrAppend(&what, DescribeTensor(tensor), " per rank");
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < world_size(); ++r) outputs[0].push_back(at::empty_like(tensor));
  FABRIC_ASSIGN_OR_RETURN(auto state, impl.Start(what, [&] {
    std::vector<at::Tensor> inputs = {tensor};
    c10d::AllgatherOptions opts;
    opts.timeout = ToChrono(impl.options.timeout);
    return impl.backend->allgather(outputs, inputs, opts);
  }, nullptr));
  FABRIC_RETURN_IF_ERROR(PendingCollective(state).Wait());
  return std::move(outputs[0]);
}

absl::StatusOr<at::Tensor> DistributedContext::ReduceScatter(const at::Tensor& input,
                                                             ReduceOp op) {
  Impl& impl = *impl_;
  std::string what = absl::StrCat("reduce_scatter(", OpName(op), ") of ");
  FABRIC_RETURN_IF_ERROR(impl.CheckTensor(input, what + "a tensor"));
  if (input.dim() == 0 || input.size(0) % world_size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, DescribeTensor(input), ": the first dimension must be a multiple of world_size ",
        world_size()));
  }
  if (op == ReduceOp::kAvg && !at::isFloatingType(input.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reduce_scatter(avg) needs a floating-point tensor, got ",
        c10::getDtypeNames(input.scalar_type()).first));
  }
  absl::StrAppend(&what, DescribeTensor(input));
  std::vector<int64_t> shape = input.sizes().vec();
  shape[0] /= world_size();
  at::Tensor output = at::empty(shape, input.options());
  at::Tensor in = input;
  FABRIC_ASSIGN_OR_RETURN(auto state, impl.Start(what, [&] {
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = ToC10d(op);
    opts.timeout = ToChrono(impl.options.timeout);
    return impl.backend->_reduce_scatter_base(output, in, opts);
  }, nullptr));
  FABRIC_RETURN_IF_ERROR(PendingCollective(state).Wait());
  if (op == ReduceOp::kAvg) output.div_(world_size());
  return output;
}

}  // namespace fabric::strategies
