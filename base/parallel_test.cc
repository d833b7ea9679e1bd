#include "base/parallel.h"

#include <atomic>
#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace fabric {
namespace {

TEST(ParallelFor, RunsEveryIndexOnceOnSeveralThreads) {
  std::vector<std::atomic<int>> runs(1000);
  absl::Mutex mu;
  std::set<std::thread::id> ids;
  ASSERT_TRUE(ParallelFor(runs.size(), 4, [&](size_t i) {
                ++runs[i];
                std::this_thread::sleep_for(std::chrono::microseconds(200));
                absl::MutexLock lock(&mu);
                ids.insert(std::this_thread::get_id());
                return absl::OkStatus();
              }).ok());
  for (size_t i = 0; i < runs.size(); ++i) ASSERT_EQ(runs[i].load(), 1) << i;
  EXPECT_GT(ids.size(), 1u);
  EXPECT_LE(ids.size(), 4u);
  EXPECT_TRUE(ParallelFor(0, 4, [](size_t) { return absl::InternalError("never"); }).ok());
}

TEST(ParallelFor, ReturnsTheLowestFailedIndexAndStopsStarting) {
  std::atomic<size_t> started{0};
  absl::Status s = ParallelFor(10000, 3, [&](size_t i) {
    ++started;
    if (i == 5 || i == 7) return absl::NotFoundError(absl::StrCat("task ", i));
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "task 5");
  EXPECT_LT(started.load(), 10000u);
}

}  // namespace
}  // namespace fabric
