#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/status/statusor.h"

TEST(LibTorchSmoke, AddsTensors) {
  at::Tensor a = at::ones({2, 3});
  absl::StatusOr<at::Tensor> b = a + a;
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->sum().item<float>(), 12.0f);
}
