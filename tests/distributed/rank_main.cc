#include "tests/distributed/rank_main.h"

#include <cstdlib>
#include <iostream>

#include <gtest/gtest.h>

namespace fabric::testing {

int RankMain(const RankFn& rank_fn) {
  absl::StatusOr<strategies::ClusterEnvironment> c = strategies::DetectClusterEnvironment();
  if (!c.ok()) {
    std::cerr << c.status() << "\n";
    return 2;
  }
  absl::Status s = rank_fn(*c);
  if (!s.ok()) std::cerr << "rank " << c->rank << " failed: " << s << "\n";
  return s.ok() ? 0 : 1;
}

int MultiProcessTestMain(int argc, char** argv, const RankFn& rank_fn) {
  if (std::getenv("RANK") != nullptr) return RankMain(rank_fn);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

}  // namespace fabric::testing
