#ifndef FABRIC_TESTS_DISTRIBUTED_RANK_MAIN_H_
#define FABRIC_TESTS_DISTRIBUTED_RANK_MAIN_H_

// The main() of the multi-process test binaries: the launcher re-executes the
// test binary for each other rank with RANK set, and those processes run the
// rank's part instead of the tests.

#include <functional>

#include "absl/status/status.h"
#include "strategies/cluster_environment.h"

namespace fabric::testing {

using RankFn = std::function<absl::Status(const strategies::ClusterEnvironment&)>;

// A rank's process: runs `rank_fn` on the detected cluster environment.
// Exit code 0 on success; 1 with the error on stderr when it fails; 2 when the
// environment cannot be read.
int RankMain(const RankFn& rank_fn);

// RankMain where RANK is set, else the gtest tests.
int MultiProcessTestMain(int argc, char** argv, const RankFn& rank_fn);

}  // namespace fabric::testing

#endif  // FABRIC_TESTS_DISTRIBUTED_RANK_MAIN_H_
