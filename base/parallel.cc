#include "base/parallel.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace fabric {

absl::Status ParallelFor(size_t n, int threads, const std::function<absl::Status(size_t)>& task) {
  std::atomic<size_t> next{0};
  absl::Mutex mu;
  size_t failed_at = n;
  absl::Status error;
  auto work = [&] {
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= n) return;
      absl::Status s = task(i);
      if (!s.ok()) {
        absl::MutexLock lock(&mu);
        if (i < failed_at) {
          failed_at = i;
          error = std::move(s);
        }
        next.store(n);
        return;
      }
    }
  };
  const size_t count = std::min<size_t>(std::max(threads, 1), n);
  std::vector<std::thread> pool;
  for (size_t t = 1; t < count; ++t) pool.emplace_back(work);
  if (n > 0) work();
  for (std::thread& t : pool) t.join();
  return error;
}

}  // namespace fabric
