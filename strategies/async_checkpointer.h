// AsyncCheckpointer: at most one save in flight, written in the background.
//
// Fabric::SaveAsync stages this rank's state into the checkpointer's
// StagingBuffers (the call blocks for that copy only) and hands the rest of
// the save (a StagedWrite: write, gather, commit, cleanup) to Start(), which
// runs it on a thread of its own over the checkpoint-only process group.
// Before anything else touches checkpoints (the next save, a load, Finish,
// the destructor) the owner calls WaitForPending(): it joins the thread and
// returns the save's verdict once (a failure is reported by whoever waits
// first: the handle or the owner's next call), with the path and the cause.
#ifndef FABRIC_STRATEGIES_ASYNC_CHECKPOINTER_H_
#define FABRIC_STRATEGIES_ASYNC_CHECKPOINTER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "checkpoint/staging.h"
#include "strategies/staged_write.h"

namespace fabric::strategies {

class DistributedContext;
struct AsyncSave;  // a save in flight, shared by the checkpointer and its handle

// What a finished asynchronous save cost.
struct AsyncSaveTimes {
  absl::Duration blocked;  // the call: planning and staging
  absl::Duration copies;   // of `blocked`, the copies into the staging buffers
  absl::Duration write;    // the background part, to the commit on every rank
  int64_t staged_bytes = 0;
  int64_t allocated_bytes = 0;  // new staging buffers (0 when all were reused)
};

// The caller's view of one asynchronous save.
class SaveHandle {
 public:
  SaveHandle() = default;
  // Blocks until the checkpoint is committed on every rank or has failed;
  // its verdict (the same on every call).
  absl::Status Wait();
  // Whether the background part has ended (Wait() would not block).
  bool done() const;
  const std::string& path() const;
  // Valid after Wait().
  AsyncSaveTimes times() const;
  bool valid() const { return save_ != nullptr; }

  explicit SaveHandle(std::shared_ptr<AsyncSave> save) : save_(std::move(save)) {}

 private:
  std::shared_ptr<AsyncSave> save_;
};

class AsyncCheckpointer {
 public:
  AsyncCheckpointer();
  // Waits for the save in flight (its failure is printed, not lost).
  ~AsyncCheckpointer();
  AsyncCheckpointer(const AsyncCheckpointer&) = delete;
  AsyncCheckpointer& operator=(const AsyncCheckpointer&) = delete;

  // Where the next save stages its snapshot. Only touch it after
  // WaitForPending(): the save in flight is reading the buffers.
  StagingBuffers& buffers() { return *buffers_; }

  // Joins the save in flight, if any. Its failure, unless its handle already
  // reported it, comes back here: "asynchronous save of <path> failed: ...".
  absl::Status WaitForPending();
  bool pending() const;

  // Runs `write` over `ctx` on a new thread, after the staged copies have
  // landed. Requires no save in flight.
  SaveHandle Start(const std::string& path, StagedWrite write, DistributedContext* ctx,
                   absl::Duration blocked);

  // The last finished save's times (zero before the first).
  AsyncSaveTimes last_times() const { return last_; }

 private:
  std::unique_ptr<StagingBuffers> buffers_;
  std::shared_ptr<AsyncSave> in_flight_;
  AsyncSaveTimes last_;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_ASYNC_CHECKPOINTER_H_
