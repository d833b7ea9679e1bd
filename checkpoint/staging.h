// Staging: the snapshot an asynchronous save writes from.
//
// A save in the background must not read the live tensors (the optimizer
// steps them in place right after the call), so the call first copies what
// this rank writes into host buffers the save owns. StagingBuffers holds
// those buffers and keeps them from one save to the next: when the k-th
// tensor staged has the dtype and shape of the last save's k-th, its buffer
// is reused (no allocation, no page fault); a new buffer is touched once
// (zeroed) when it is made so the copy on the hot path only writes memory
// that is already mapped. Memory cost: one copy of what this rank writes.
//
// CUDA tensors are copied into pinned memory on a side stream: Stage()
// returns once the copies are enqueued, EndStaging() makes the compute
// stream wait for them (the next optimizer step cannot overwrite a
// parameter before its copy is done, and the host is not blocked), and
// WaitReady() (on the writer thread) blocks until the bytes are on the host.
#ifndef FABRIC_CHECKPOINT_STAGING_H_
#define FABRIC_CHECKPOINT_STAGING_H_

#include <cstdint>
#include <climits>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "checkpoint/value.h"

namespace fabric {

class StagingBuffers {
 public:
  StagingBuffers();
  ~StagingBuffers();
  StagingBuffers(const StagingBuffers&) = delete;
  StagingBuffers& operator=(const StagingBuffers&) = delete;

  // Starts a snapshot: tensors staged from now on are matched, in order,
  // against the previous snapshot's buffers. `max_new_bytes` bounds the new
  // buffers this snapshot may allocate (a host that cannot hold a second
  // copy of the state must get an error, not the OOM killer): past it,
  // nothing more is allocated and EndStaging() fails.
  void BeginStaging(int64_t max_new_bytes = INT64_MAX);
  // A host copy of `t` (contiguous, same dtype and shape) that stays valid
  // until the next BeginStaging().
  at::Tensor Stage(const at::Tensor& t);
  // `v` with every tensor inside it staged (containers copied).
  Value StageValue(const Value& v);
  // Ends the snapshot: buffers not used this time are released; on CUDA the
  // compute stream waits for the copies. ResourceExhausted when the new
  // buffers would have passed `max_new_bytes` (then every buffer is
  // released and the snapshot must not be written).
  absl::Status EndStaging();
  // Blocks until every copy of the snapshot has landed (a no-op on CPU).
  absl::Status WaitReady();

  // Of the last snapshot: bytes staged, and bytes of buffers newly allocated
  // for it (0 when its structure matched the previous one).
  int64_t staged_bytes() const { return staged_bytes_; }
  // Seconds spent in the copies themselves (enqueueing them, on CUDA); the
  // rest of a save's blocked time is its planning.
  double copy_seconds() const { return copy_seconds_; }
  int64_t allocated_bytes() const { return allocated_bytes_; }
  // Buffers held now.
  int64_t held_bytes() const;

 private:
  struct Device;  // CUDA side stream and event; null on CPU builds
  std::vector<at::Tensor> buffers_;
  size_t next_ = 0;
  int64_t staged_bytes_ = 0;
  int64_t allocated_bytes_ = 0;
  int64_t max_new_bytes_ = INT64_MAX;
  double copy_seconds_ = 0;
  int64_t refused_bytes_ = 0;  // needed beyond max_new_bytes_
  std::unique_ptr<Device> device_;
};

// What one process may stage anew: an equal share of the host's available
// memory (MemAvailable) among the `processes_on_host`, less a margin; no
// bound where /proc/meminfo cannot be read.
int64_t StagingBudget(int processes_on_host);

// Stages through `buffers`, or, when it is null, hands the live tensor on
// (the synchronous save writes straight from the model).
at::Tensor StageOrPass(StagingBuffers* buffers, const at::Tensor& t);
Value StageOrPass(StagingBuffers* buffers, const Value& v);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_STAGING_H_
