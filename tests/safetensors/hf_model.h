// The model of hf_load_program and its test: row counts that do not divide
// by 2 or 3, so FSDP shards are uneven, and a megabyte of weights, so a
// rank's share of the reads is measurable.
#ifndef FABRIC_TESTS_SAFETENSORS_HF_MODEL_H_
#define FABRIC_TESTS_SAFETENSORS_HF_MODEL_H_

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/utils.h>

namespace hf_test {

inline torch::nn::Sequential MakeModel(int seed) {
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Linear(64, 4001), torch::nn::Tanh(),
                               torch::nn::Linear(4001, 7));
}

}  // namespace hf_test

#endif  // FABRIC_TESTS_SAFETENSORS_HF_MODEL_H_
