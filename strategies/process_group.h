#ifndef FABRIC_STRATEGIES_PROCESS_GROUP_H_
#define FABRIC_STRATEGIES_PROCESS_GROUP_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "strategies/cluster_environment.h"

namespace fabric::strategies {

enum class ReduceOp { kSum, kAvg, kMin, kMax };

enum class CommBackend {
  kAuto,  // NCCL when built with CUDA and a GPU is visible, else Gloo.
  kGloo,  // CPU tensors.
  kNccl,  // CUDA tensors; needs --config=cuda.
};

struct DistributedOptions {
  CommBackend backend = CommBackend::kAuto;
  // Bound on the rendezvous and on every collective: a rank that died or
  // never arrives makes the others fail after this long instead of hanging.
  absl::Duration timeout = absl::Minutes(30);
  // Threads of the Gloo process group.
  int gloo_threads = 2;
  // Bound on the rendezvous alone (every rank reaching the TCPStore): a node
  // that never arrives is named after this long. Zero: `timeout`.
  absl::Duration rendezvous_timeout = absl::ZeroDuration();
  // After a failure that is not a timeout (a peer's connection dropped), how
  // long to let the other ranks' progress settle before naming the missing
  // rank (the survivors may see the error at slightly different times).
  absl::Duration diagnosis_grace = absl::Milliseconds(500);
  // Every rank's watch thread bumps its heartbeat in the store this often and
  // looks for a failure reported by any node's launcher (ReportFailure).
  absl::Duration heartbeat_interval = absl::Milliseconds(200);
  // When another rank is reported failed (or rank 0's store is gone) and
  // this process has not ended by itself `failure_exit_grace` later, print
  // why and end it (exit status 1), so that no rank of any node outlives a
  // dead one for long. Off here (callers see the errors); Fabric turns it on.
  bool exit_on_peer_failure = false;
  absl::Duration failure_exit_grace = absl::Seconds(3);
};

class DistributedContext;

// A collective in flight (asynchronous all-reduce, for DDP's buckets).
class PendingCollective {
 public:
  PendingCollective() = default;
  // Blocks until the collective is done. Errors are those of the blocking
  // calls. Calling it again returns the same status.
  absl::Status Wait();
  bool valid() const { return state_ != nullptr; }

  // Internal: made by DistributedContext.
  struct State;
  explicit PendingCollective(std::shared_ptr<State> state) : state_(std::move(state)) {}

 private:
  std::shared_ptr<State> state_;
};

// One process group over a TCPStore rendezvous (rank 0 hosts the store):
// c10d's ProcessGroupGloo on CPU, ProcessGroupNCCL on CUDA. All calls are
// collectives: every rank must make the same calls in the same order.
//
// Errors name this rank, the collective and, when the store can tell, the
// rank that did not arrive ("rank 0: all_reduce(sum) of 4 MiB (collective #7)
// timed out after 5s waiting for rank 3 (last seen at #6 barrier)"). After a
// failed collective the group is unusable: later calls fail at once.
class DistributedContext {
 public:
  static absl::StatusOr<std::shared_ptr<DistributedContext>> Create(
      const ClusterEnvironment& cluster, const DistributedOptions& options = {});

  DistributedContext(const DistributedContext&) = delete;
  DistributedContext& operator=(const DistributedContext&) = delete;
  ~DistributedContext();

  const ClusterEnvironment& cluster() const;
  int rank() const { return cluster().rank; }
  int world_size() const { return cluster().world_size; }
  int local_rank() const { return cluster().local_rank; }
  bool is_rank_zero() const { return cluster().rank == 0; }
  // "gloo" or "nccl".
  std::string backend_name() const;
  // Where tensors passed to collectives must live: CPU for Gloo, the local
  // rank's GPU for NCCL.
  c10::Device device() const;
  absl::Duration timeout() const;

  absl::Status Barrier();
  // In place: `tensor` becomes rank `root`'s.
  absl::Status Broadcast(at::Tensor& tensor, int root = 0);
  // In place. kAvg needs a floating-point tensor.
  absl::Status AllReduce(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  // Starts an in-place all-reduce; the result is valid after Wait().
  absl::StatusOr<PendingCollective> AllReduceAsync(at::Tensor tensor,
                                                   ReduceOp op = ReduceOp::kSum);
  // Every rank's `tensor` (same shape and dtype on all ranks), by rank.
  absl::StatusOr<std::vector<at::Tensor>> AllGather(const at::Tensor& tensor);
  // `input` has world_size * n rows; returns this rank's n reduced rows
  // (rows [rank * n, (rank + 1) * n) of the reduction).
  absl::StatusOr<at::Tensor> ReduceScatter(const at::Tensor& input,
                                           ReduceOp op = ReduceOp::kSum);
  // Rank `root`'s bytes, on every rank (for metadata: paths, JSON, ...).
  absl::StatusOr<std::string> BroadcastBytes(const std::string& bytes, int root = 0);
  // Every rank's bytes, by rank (lengths may differ).
  absl::StatusOr<std::vector<std::string>> AllGatherBytes(const std::string& bytes);

  // Agreeing on a verdict. One error policy: a rank returns its own status
  // unchanged; a rank that learns of another rank's failure returns that
  // failure's code, with its message prefixed "rank <r> failed: ". A failed
  // collective is returned as is.
  //
  // Rank `root`'s status on every rank (rank 0 did the work, the others
  // return its verdict).
  absl::Status ShareStatus(const absl::Status& mine, int root = 0);
  // OK on every rank iff `mine` is OK on every rank; else each failed rank
  // returns its own error and the others the lowest failed rank's.
  absl::Status AgreeOnStatus(const absl::Status& mine);

  // Rank-zero helpers.
  // True on every rank iff `decision` is true on all ranks (all = true) or
  // on any rank (all = false).
  absl::StatusOr<bool> ReduceBoolean(bool decision, bool all = true);
  // Rank 0 runs `fn` first (e.g. to download or create a file), then the
  // others; when rank 0 fails, the others do not run and all return its error
  // (as ShareStatus does).
  absl::Status RankZeroFirst(const std::function<absl::Status()>& fn);

  // Tells every rank that `failure` ended the job ("rank 3 (node 1, ...)
  // was killed by signal 9"): the first report wins; errors of later
  // collectives name it. Thread-safe (a launcher's watch thread calls it).
  void ReportFailure(const std::string& failure);
  // The failure reported by ReportFailure on any rank, or seen by this
  // rank's watch thread; empty when none.
  std::string PeerFailure() const;

  // A second process group over the same ranks and TCPStore, always Gloo
  // (CPU tensors, also under NCCL training), whose collectives never queue
  // behind or interleave with this group's: asynchronous checkpoints
  // coordinate on one from their writer thread while training goes on. A
  // collective: every rank calls it, with the same `name`.
  absl::StatusOr<std::shared_ptr<DistributedContext>> NewGroup(const std::string& name);

  // Internal.
  struct Impl;

 private:
  explicit DistributedContext(std::unique_ptr<Impl> impl);
  // Rendezvous over impl->store and the backend.
  static absl::StatusOr<std::shared_ptr<DistributedContext>> Connect(
      std::unique_ptr<Impl> impl, CommBackend backend, absl::Duration rendezvous_timeout);

  std::unique_ptr<Impl> impl_;
};

// "4 MiB", "1.5 KiB", "12 B".
std::string HumanBytes(int64_t bytes);

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_PROCESS_GROUP_H_
