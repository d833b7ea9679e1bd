// What the Fabric end-to-end tests (tests/fabric_ddp, tests/fabric_fsdp)
// share: running ddp_program, the single-process reference training, and
// comparing models.
#ifndef FABRIC_TESTS_FABRIC_DDP_PROGRAM_TEST_UTIL_H_
#define FABRIC_TESTS_FABRIC_DDP_PROGRAM_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>

#include <torch/nn/modules/container/sequential.h>
#include <torch/optim/sgd.h>

#include "fabric/fabric.h"

namespace fabric_test {

// `name` under the test's TEST_TMPDIR.
std::string Tmp(const std::string& name);

// Runs ddp_program (the path main() was given) with `args`; a gtest failure
// when it exits non-zero.
void RunProgram(const std::string& args);
// The ddp_program command line with `args`, to run and expect a failure.
std::string ProgramCommand(const std::string& args);

// Single-process training on the whole global batch: the reference that
// DDP and FSDP must match.
void Reference(torch::nn::Sequential& model, std::shared_ptr<torch::optim::SGD>& opt,
               int64_t first_step, int steps);

// DDP and FSDP average the ranks' mean losses' gradients where the reference
// takes the mean over the global batch: equal in exact arithmetic, different
// only in float32 summation order, hence a tolerance of a few ulps times the
// steps.
void ExpectModelsClose(torch::nn::Sequential& a, torch::nn::Sequential& b);

std::unique_ptr<fabric::Fabric> SingleDevice();

// Loads `path` (saved after 5 steps) into a new model and optimizer in a
// single-device Fabric and checks it against 5 steps of single-process
// training; the loaded model and optimizer come back in `model` and `opt`.
void LoadFiveStepsAndCompare(fabric::Fabric& fabric, const std::string& path,
                             torch::nn::Sequential& model,
                             std::shared_ptr<torch::optim::SGD>& opt);

// main() of a test binary whose only argument is ddp_program's path.
int ProgramTestMain(int argc, char** argv);

}  // namespace fabric_test

#endif  // FABRIC_TESTS_FABRIC_DDP_PROGRAM_TEST_UTIL_H_
