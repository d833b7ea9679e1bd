// StagingBuffers: the copy is a snapshot, buffers are reused when the
// structure repeats, and the budget refuses a copy that does not fit.
#include "checkpoint/staging.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

namespace fabric {
namespace {

TEST(Staging, CopyIsASnapshotAndBuffersAreReused) {
  StagingBuffers b;
  at::Tensor live = at::arange(1000, at::kFloat);
  b.BeginStaging();
  at::Tensor staged = b.Stage(live);
  ASSERT_TRUE(b.EndStaging().ok());
  EXPECT_NE(staged.data_ptr(), live.data_ptr());
  live.add_(1);  // the optimizer steps in place
  EXPECT_TRUE(at::equal(staged, at::arange(1000, at::kFloat)));
  EXPECT_EQ(b.allocated_bytes(), 4000);

  b.BeginStaging();
  at::Tensor again = b.Stage(live);
  ASSERT_TRUE(b.EndStaging().ok());
  EXPECT_EQ(again.data_ptr(), staged.data_ptr()) << "same structure: the buffer is reused";
  EXPECT_EQ(b.allocated_bytes(), 0);
  EXPECT_TRUE(at::equal(again, live));

  // Another shape gets a new buffer; the one left over is released.
  b.BeginStaging();
  b.Stage(at::zeros({10, 10}, at::kDouble));
  ASSERT_TRUE(b.EndStaging().ok());
  EXPECT_EQ(b.allocated_bytes(), 800);
  EXPECT_EQ(b.held_bytes(), 800);
}

TEST(Staging, ValuesAreCopiedDeep) {
  StagingBuffers b;
  at::Tensor t = at::ones({4});
  Dict inner;
  inner.Set("t", Value(t));
  inner.Set("n", Value(int64_t{3}));
  b.BeginStaging();
  Value v = b.StageValue(Value(inner));
  ASSERT_TRUE(b.EndStaging().ok());
  t.fill_(7);
  EXPECT_TRUE(at::equal(v.as_dict().Find("t")->as_tensor(), at::ones({4})));
  EXPECT_EQ(v.as_dict().Find("n")->as_int(), 3);
}

TEST(Staging, OverTheBudgetIsAnErrorAndHoldsNothing) {
  StagingBuffers b;
  b.BeginStaging(/*max_new_bytes=*/6000);
  b.Stage(at::zeros({1000}));  // 4000 B: fits
  b.Stage(at::zeros({1000}));  // 8000 B in all: over
  b.Stage(at::zeros({1000}));
  absl::Status s = b.EndStaging();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("needs 12000 bytes"), std::string::npos) << s;
  EXPECT_EQ(b.held_bytes(), 0);
  // Reused buffers do not count against the budget of the next snapshot.
  b.BeginStaging();
  b.Stage(at::zeros({1000}));
  ASSERT_TRUE(b.EndStaging().ok());
  b.BeginStaging(/*max_new_bytes=*/100);
  b.Stage(at::zeros({1000}));
  EXPECT_TRUE(b.EndStaging().ok());
  EXPECT_EQ(b.allocated_bytes(), 0);
}

TEST(Staging, BudgetIsAShareOfAvailableMemory) {
  const int64_t one = StagingBudget(1), two = StagingBudget(2);
  ASSERT_GT(one, 0);
  ASSERT_LT(one, INT64_MAX) << "/proc/meminfo is readable here";
  // MemAvailable moves between the two reads; a share is about half.
  EXPECT_NEAR(static_cast<double>(two) / one, 0.5, 0.1);
}

}  // namespace
}  // namespace fabric
