#include "checkpoint/background_unlinker.h"

#include <unistd.h>

#include <cstdlib>
#include <deque>
#include <thread>
#include <utility>

#include "absl/synchronization/mutex.h"

namespace fabric {
namespace {

class BackgroundUnlinker {
 public:
  static BackgroundUnlinker& Get() {
    static BackgroundUnlinker* unlinker = new BackgroundUnlinker();
    return *unlinker;
  }
  void Unlink(std::string path) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(path));
    // A child forked after the thread started has no thread: start its own.
    if (thread_pid_ != getpid()) {
      thread_pid_ = getpid();
      busy_ = 0;
      std::thread([this] { Loop(); }).detach();
      if (!exit_hook_) {
        exit_hook_ = true;
        std::atexit([] { Get().Drain(); });
      }
    }
  }

 private:
  void Loop() {
    for (;;) {
      std::string path;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](std::deque<std::string>* q) { return !q->empty(); }, &queue_));
        path = queue_.front();
        ++busy_;
        queue_.pop_front();
      }
      unlink(path.c_str());
      absl::MutexLock lock(&mu_);
      --busy_;
    }
  }
  void Drain() {
    absl::MutexLock lock(&mu_);
    if (thread_pid_ != getpid()) return;  // a forked child that never unlinked
    mu_.Await(absl::Condition(
        +[](BackgroundUnlinker* u) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return u->queue_.empty() && u->busy_ == 0;
        },
        this));
  }

  absl::Mutex mu_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  pid_t thread_pid_ ABSL_GUARDED_BY(mu_) = 0;  // the process whose thread runs Loop
  bool exit_hook_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

void UnlinkInBackground(std::string path) { BackgroundUnlinker::Get().Unlink(std::move(path)); }

}  // namespace fabric
