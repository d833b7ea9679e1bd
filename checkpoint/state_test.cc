#include "checkpoint/state.h"

#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

namespace fabric {
namespace {

TEST(State, HoldsModulesOptimizersAndValuesInOrder) {
  torch::nn::Linear lin(2, 3);
  auto opt = std::make_shared<torch::optim::SGD>(lin->parameters(), torch::optim::SGDOptions(0.1));
  State s{{"model", lin}, {"optimizer", opt}, {"step", 5}, {"tag", "x"}};
  EXPECT_EQ(s.keys(), (std::vector<std::string>{"model", "optimizer", "step", "tag"}));
  EXPECT_TRUE(s["model"].is_module());
  EXPECT_EQ(&s["model"].module(), lin.ptr().get());
  EXPECT_TRUE(s["optimizer"].is_optimizer());
  EXPECT_EQ(s["step"].value().as_int(), 5);
  EXPECT_EQ(s["tag"].value().as_string(), "x");

  s["step"] = 6;  // replaces in place, keeps the position
  EXPECT_EQ(s.keys()[2], "step");
  EXPECT_EQ(s["step"].value().as_int(), 6);
  s["new"];  // default-inserts None
  EXPECT_TRUE(s.Find("new")->value().is_none());
  EXPECT_TRUE(s.Erase("new"));
  EXPECT_FALSE(s.Contains("new"));
  EXPECT_EQ(s.size(), 4u);
}

}  // namespace
}  // namespace fabric
