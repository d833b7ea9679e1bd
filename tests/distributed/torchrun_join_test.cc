// torchrun-style join: the test starts every rank itself with RANK,
// LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR and
// MASTER_PORT set (as torchrun would); the Launcher must join instead of
// starting processes, and the ranks rendezvous over the TCPStore.

#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "strategies/free_port.h"
#include "strategies/launcher.h"
#include "strategies/process_group.h"
#include "tests/distributed/collective_checks.h"
#include "tests/distributed/test_util.h"

namespace fabric::testing {
namespace {

constexpr char kRole[] = "FABRIC_TEST_ROLE";

std::vector<pid_t> StartRanks(int world, const std::string& role) {
  absl::StatusOr<int> port = strategies::FindFreePort();
  EXPECT_TRUE(port.ok()) << port.status();
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world; ++rank) {
    pids.push_back(SpawnSelf({{"RANK", absl::StrCat(rank)},
                              {"LOCAL_RANK", absl::StrCat(rank)},
                              {"WORLD_SIZE", absl::StrCat(world)},
                              {"LOCAL_WORLD_SIZE", absl::StrCat(world)},
                              {"GROUP_RANK", "0"},
                              {"MASTER_ADDR", "127.0.0.1"},
                              {"MASTER_PORT", absl::StrCat(*port)},
                              {kRole, role}}));
  }
  return pids;
}

TEST(TorchrunJoin, RanksFromTheEnvironmentRunCollectives) {
  std::vector<pid_t> pids = StartRanks(3, "collectives");
  for (size_t rank = 0; rank < pids.size(); ++rank) {
    int status = WaitOrKill(pids[rank], absl::Seconds(60));
    EXPECT_EQ(status, 0) << "rank " << rank << " " << DescribeWaitStatus(status);
  }
}

TEST(TorchrunJoin, DeadStoreHostIsNamed) {
  const absl::Time start = absl::Now();
  std::vector<pid_t> pids = StartRanks(3, "rank0_dies");
  for (size_t rank = 0; rank < pids.size(); ++rank) {
    int status = WaitOrKill(pids[rank], absl::Seconds(30));
    if (rank == 0) {
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << DescribeWaitStatus(status);
    } else {
      EXPECT_EQ(status, 0) << "rank " << rank << " " << DescribeWaitStatus(status);
    }
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

absl::Status RunRole(const std::string& role) {
  strategies::LaunchOptions options;
  options.devices = 3;
  absl::StatusOr<std::unique_ptr<strategies::Launcher>> launcher =
      strategies::Launcher::Launch(options);
  if (!launcher.ok()) return launcher.status();
  if ((*launcher)->is_launcher()) return absl::InternalError("a joined rank started processes");
  const strategies::ClusterEnvironment& c = (*launcher)->cluster();
  strategies::DistributedOptions dist;
  dist.timeout = absl::Seconds(role == "collectives" ? 30 : 3);
  dist.rendezvous_timeout = absl::Seconds(30);  // starting the ranks may take seconds here
  absl::StatusOr<std::shared_ptr<strategies::DistributedContext>> ctx =
      strategies::DistributedContext::Create(c, dist);
  if (!ctx.ok()) return ctx.status();
  if (role == "collectives") return CheckCollectives(**ctx);
  if (role == "rank0_dies") {
    if (absl::Status s = (*ctx)->Barrier(); !s.ok()) return s;
    if (c.rank == 0) raise(SIGKILL);
    at::Tensor t = at::ones({1000});
    absl::Status s = (*ctx)->AllReduce(t);
    std::cerr << "rank " << c.rank << ": " << s << "\n";
    if (s.ok()) return absl::InternalError("all_reduce without rank 0 succeeded");
    if (s.message().find("rank 0") == std::string::npos) {
      return absl::InternalError("the error does not name rank 0: " + s.ToString());
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError("unknown role " + role);
}

}  // namespace
}  // namespace fabric::testing

int main(int argc, char** argv) {
  if (getenv("RANK") != nullptr) {
    absl::Status s = fabric::testing::RunRole(fabric::testing::Env(fabric::testing::kRole));
    if (!s.ok()) std::cerr << "rank " << getenv("RANK") << " failed: " << s << "\n";
    return s.ok() ? 0 : 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
