#include "strategies/async_checkpointer.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <iostream>
#include <mutex>
#include <thread>
#include <utility>

#include <c10/core/GradMode.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace fabric::strategies {

struct AsyncSave {
  std::string path;
  std::thread thread;
  std::mutex join_mu;  // one joiner at a time
  std::mutex mu;
  bool finished = false;
  bool reported = false;  // a failure was returned to someone
  absl::Status status;
  AsyncSaveTimes times;

  // Joins the thread (once) and returns the verdict.
  absl::Status Join() {
    std::lock_guard<std::mutex> join(join_mu);
    if (thread.joinable()) thread.join();
    std::lock_guard<std::mutex> lock(mu);
    return status;
  }
  // The verdict for the first caller that has not seen a failure yet.
  absl::Status Report() {
    absl::Status s = Join();
    std::lock_guard<std::mutex> lock(mu);
    if (s.ok() || reported) return absl::OkStatus();
    reported = true;
    return s;
  }
};

absl::Status SaveHandle::Wait() {
  if (save_ == nullptr) return absl::FailedPreconditionError("SaveHandle: no save");
  absl::Status s = save_->Join();
  std::lock_guard<std::mutex> lock(save_->mu);
  save_->reported = save_->reported || !s.ok();
  return s;
}

bool SaveHandle::done() const {
  if (save_ == nullptr) return true;
  std::lock_guard<std::mutex> lock(save_->mu);
  return save_->finished;
}

const std::string& SaveHandle::path() const {
  static const std::string* const kNone = new std::string();
  return save_ != nullptr ? save_->path : *kNone;
}

AsyncSaveTimes SaveHandle::times() const {
  if (save_ == nullptr) return {};
  std::lock_guard<std::mutex> lock(save_->mu);
  return save_->times;
}

AsyncCheckpointer::AsyncCheckpointer() : buffers_(std::make_unique<StagingBuffers>()) {}

AsyncCheckpointer::~AsyncCheckpointer() {
  if (absl::Status s = WaitForPending(); !s.ok()) std::cerr << "fabric: " << s << std::endl;
}

bool AsyncCheckpointer::pending() const { return in_flight_ != nullptr; }

absl::Status AsyncCheckpointer::WaitForPending() {
  if (in_flight_ == nullptr) return absl::OkStatus();
  std::shared_ptr<AsyncSave> save = std::move(in_flight_);
  in_flight_.reset();
  absl::Status s = save->Report();
  {
    std::lock_guard<std::mutex> lock(save->mu);
    last_ = save->times;
  }
  return s;
}

SaveHandle AsyncCheckpointer::Start(const std::string& path, StagedWrite write,
                                    DistributedContext* ctx, absl::Duration blocked) {
  auto save = std::make_shared<AsyncSave>();
  save->path = path;
  save->times.blocked = blocked;
  save->times.staged_bytes = buffers_->staged_bytes();
  save->times.allocated_bytes = buffers_->allocated_bytes();
  save->times.copies = absl::Seconds(buffers_->copy_seconds());
  StagingBuffers* buffers = buffers_.get();
  AsyncSave* raw = save.get();  // the thread ends before `save` can go
  save->thread = std::thread([raw, buffers, ctx, write = std::move(write)]() {
    const absl::Time t0 = absl::Now();
    // The write yields to training: on a host whose cores training keeps
    // busy (this one: 2 cores, 2 ranks), a writer at normal priority slowed
    // the overlapped steps by 82%. Nice 10 gives it about a tenth of a core
    // that training wants, and all of one training leaves idle. Not
    // SCHED_IDLE: that starved the write when other processes kept the host
    // busy, with training waiting for it (and an unprivileged thread cannot
    // be raised back). Threads it starts inherit the nice value.
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
    c10::NoGradGuard no_grad;
    absl::Status s = buffers->WaitReady();
    if (s.ok()) {
      try {
        s = write(ctx);
      } catch (const std::exception& e) {
        s = absl::InternalError(e.what());
      }
    }
    if (!s.ok()) {
      s = absl::Status(s.code(), absl::StrCat("asynchronous save of ", raw->path,
                                              " failed: ", s.message()));
    }
    std::lock_guard<std::mutex> lock(raw->mu);
    raw->status = std::move(s);
    raw->times.write = absl::Now() - t0;
    raw->finished = true;
  });
  in_flight_ = save;
  return SaveHandle(std::move(save));
}

}  // namespace fabric::strategies
