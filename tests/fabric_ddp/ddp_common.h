// The model, data and optimizer shared by ddp_program and its test.
#ifndef FABRIC_TESTS_FABRIC_DDP_DDP_COMMON_H_
#define FABRIC_TESTS_FABRIC_DDP_DDP_COMMON_H_

#include <memory>
#include <utility>

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

namespace fabric_test {

inline torch::nn::Sequential MakeModel() {
  torch::manual_seed(42);
  return torch::nn::Sequential(torch::nn::Linear(6, 16), torch::nn::Tanh(),
                               torch::nn::Linear(16, 3));
}

inline std::shared_ptr<torch::optim::SGD> MakeOptimizer(std::vector<at::Tensor> params) {
  return std::make_shared<torch::optim::SGD>(std::move(params),
                                             torch::optim::SGDOptions(0.1).momentum(0.9));
}

inline std::shared_ptr<torch::optim::SGD> MakeOptimizer(torch::nn::Sequential& m) {
  return MakeOptimizer(m->parameters());
}

// 24 samples: divisible by 1, 2, 3 and 4 ranks.
inline std::pair<at::Tensor, at::Tensor> GlobalBatch(int64_t step) {
  torch::manual_seed(1000 + step);
  at::Tensor x = torch::randn({24, 6});
  at::Tensor y = torch::randn({24, 3});
  return {x, y};
}

inline at::Tensor Loss(torch::nn::Sequential& m, const at::Tensor& x, const at::Tensor& y) {
  return (m->forward(x) - y).pow(2).mean();
}

}  // namespace fabric_test

#endif  // FABRIC_TESTS_FABRIC_DDP_DDP_COMMON_H_
