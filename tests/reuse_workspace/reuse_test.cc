// Builds against @fabric_cpp//fabric from another workspace and round-trips a
// checkpoint through it.
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include "fabric/fabric.h"

TEST(ReuseFromAnotherWorkspace, SavesAndLoads) {
  fabric::FabricOptions options;
  options.accelerator = "cpu";
  auto fabric = fabric::Fabric::Create(options);
  ASSERT_TRUE(fabric.ok()) << fabric.status();
  torch::nn::Linear a(4, 3), b(4, 3);
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/reuse.pt";
  fabric::State saved{{"model", a}, {"epoch", 7}};
  ASSERT_TRUE((*fabric)->Save(path, saved).ok());
  fabric::State loaded{{"model", b}, {"epoch", 0}};
  auto rest = (*fabric)->Load(path, loaded);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(loaded["epoch"].value().as_int(), 7);
  EXPECT_TRUE(a->weight.equal(b->weight));
}
