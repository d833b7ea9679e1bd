// Collectives between real processes: the test process becomes rank 0 and
// starts the other ranks through the Launcher (re-executing this binary,
// which then runs the scenario named in FABRIC_TEST_SCENARIO instead of the
// tests). Gloo over a TCPStore on 127.0.0.1, on a free port per launch.

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "strategies/cluster_environment.h"
#include "strategies/free_port.h"
#include "strategies/launcher.h"
#include "strategies/process_group.h"
#include "tests/distributed/collective_checks.h"
#include "tests/distributed/test_util.h"

namespace fabric::testing {
namespace {

using strategies::ClusterEnvironment;
using strategies::DistributedContext;
using strategies::DistributedOptions;
using strategies::Launcher;
using strategies::LaunchOptions;

constexpr char kScenario[] = "FABRIC_TEST_SCENARIO";

std::string ResultPath(const ClusterEnvironment& c, int rank) {
  return TempPath(absl::StrCat("result_", c.master_port, "_rank", rank));
}

// `rendezvous`: how long the ranks may take to start (a loaded machine takes
// seconds to start a LibTorch program), apart from the collectives' timeout.
absl::StatusOr<std::shared_ptr<DistributedContext>> Connect(
    const ClusterEnvironment& c, absl::Duration timeout,
    absl::Duration rendezvous = absl::Seconds(30)) {
  DistributedOptions options;
  options.timeout = timeout;
  options.rendezvous_timeout = rendezvous;
  return DistributedContext::Create(c, options);
}

// The failure scenarios: `victim` (the last rank) stops taking part after the
// first barrier; the survivors' all_reduce must fail, naming it, quickly.
absl::Status FailureScenario(const ClusterEnvironment& c, bool kill_victim) {
  absl::StatusOr<std::shared_ptr<DistributedContext>> ctx = Connect(c, absl::Seconds(3));
  if (!ctx.ok()) return ctx.status();
  if (absl::Status s = (*ctx)->Barrier(); !s.ok()) return s;
  const int victim = c.world_size - 1;
  if (c.rank == victim) {
    if (kill_victim) raise(SIGKILL);
    absl::SleepFor(absl::Seconds(120));  // Alive, but never arrives.
    return absl::InternalError("the stalled rank was not terminated by the launcher");
  }
  at::Tensor t = at::ones({1 << 20});
  const absl::Time start = absl::Now();
  absl::Status s = (*ctx)->AllReduce(t);
  const absl::Duration took = absl::Now() - start;
  std::cerr << "rank " << c.rank << " got after " << took << ": " << s << "\n";
  const std::string expected_name = absl::StrCat("waiting for rank ", victim, " (last seen at #1 barrier)");
  if (s.ok()) return absl::InternalError("all_reduce with a missing rank succeeded");
  if (s.message().find(expected_name) == std::string::npos ||
      s.message().find(absl::StrCat("rank ", c.rank, ": all_reduce(sum) of 4 MiB")) != 0) {
    return absl::InternalError(absl::StrCat("error does not name the collective and rank ",
                                            victim, ": ", s.ToString()));
  }
  if (!kill_victim && (s.code() != absl::StatusCode::kDeadlineExceeded ||
                       s.message().find("timed out after 3s") == std::string::npos)) {
    return absl::InternalError("expected a timeout error: " + s.ToString());
  }
  if (took > absl::Seconds(10)) {
    return absl::InternalError(absl::StrCat("the error took ", absl::FormatDuration(took)));
  }
  // The group is unusable now, and says so at once.
  absl::Status after = (*ctx)->Barrier();
  if (after.code() != absl::StatusCode::kFailedPrecondition) {
    return absl::InternalError("barrier after the failure: " + after.ToString());
  }
  return absl::OkStatus();
}

// Runs on every rank: the parent (rank 0) and the re-executed children.
absl::Status RunScenario(const std::string& scenario, const ClusterEnvironment& c) {
  if (scenario == "collectives") {
    absl::StatusOr<std::shared_ptr<DistributedContext>> ctx = Connect(c, absl::Seconds(30));
    if (!ctx.ok()) return ctx.status();
    return CheckCollectives(**ctx);
  }
  if (scenario == "killed_rank") return FailureScenario(c, /*kill_victim=*/true);
  if (scenario == "stalled_rank") return FailureScenario(c, /*kill_victim=*/false);
  if (scenario == "late_rendezvous") {
    if (c.rank == c.world_size - 1) {
      absl::SleepFor(absl::Seconds(120));
      return absl::InternalError("not terminated");
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<std::shared_ptr<DistributedContext>> ctx =
        Connect(c, absl::Seconds(2), absl::Seconds(8));
    std::cerr << "rank " << c.rank << " rendezvous: " << ctx.status() << "\n";
    if (ctx.ok()) return absl::InternalError("rendezvous without the last rank succeeded");
    if (ctx.status().message().find(absl::StrCat("rank(s) ", c.world_size - 1, " of world_size ",
                                                 c.world_size, " never joined")) ==
        std::string::npos) {
      return absl::InternalError("rendezvous error does not name the rank: " +
                                 ctx.status().ToString());
    }
    if (absl::Now() - start > absl::Seconds(20)) return absl::InternalError("rendezvous took too long");
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError("unknown scenario " + scenario);
}

struct Job {
  std::unique_ptr<Launcher> launcher;
  absl::Status rank0;
};

Job LaunchAndRun(const std::string& scenario, int devices) {
  LaunchOptions options;
  options.devices = devices;
  options.extra_env = {{kScenario, scenario}};
  absl::StatusOr<std::unique_ptr<Launcher>> launcher = Launcher::Launch(options);
  EXPECT_TRUE(launcher.ok()) << launcher.status();
  if (!launcher.ok()) return {nullptr, launcher.status()};
  EXPECT_EQ((*launcher)->child_pids().size(), static_cast<size_t>(devices - 1));
  EXPECT_EQ((*launcher)->cluster().rank, 0);
  Job job{*std::move(launcher), absl::OkStatus()};
  job.rank0 = RunScenario(scenario, job.launcher->cluster());
  return job;
}

class Collectives : public ::testing::TestWithParam<int> {};

TEST_P(Collectives, MatchLocalResults) {
  Job job = LaunchAndRun("collectives", GetParam());
  ASSERT_NE(job.launcher, nullptr);
  EXPECT_TRUE(job.rank0.ok()) << job.rank0;
  absl::Status children = job.launcher->Finish(absl::Seconds(60));
  EXPECT_TRUE(children.ok()) << children;
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Collectives, ::testing::Values(2, 3, 4));

TEST(Failures, KilledRankIsNamedAndNothingHangs) {
  const absl::Time start = absl::Now();
  Job job = LaunchAndRun("killed_rank", 3);
  ASSERT_NE(job.launcher, nullptr);
  EXPECT_TRUE(job.rank0.ok()) << job.rank0;
  // Rank 1 checked its own error; wait for its verdict before Finish()
  // (which terminates the survivors once it sees the dead rank).
  std::optional<std::string> rank1 =
      WaitForFile(ResultPath(job.launcher->cluster(), 1), absl::Seconds(30));
  ASSERT_TRUE(rank1.has_value());
  EXPECT_EQ(*rank1, "OK");
  std::vector<pid_t> pids = job.launcher->child_pids();
  absl::Status finished = job.launcher->Finish(absl::Seconds(30));
  EXPECT_NE(finished.message().find(absl::StrCat("rank 2 (local rank 2, pid ", pids[1],
                                                 ") was killed by signal 9")),
            std::string::npos)
      << finished;
  EXPECT_EQ(finished.message().find("rank 1 "), std::string::npos) << finished;
  for (pid_t pid : pids) EXPECT_TRUE(IsReaped(pid)) << pid;
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

// c10d writes to its sockets without MSG_NOSIGNAL: once a process group
// exists, a write to a peer that died must fail with EPIPE (and so name the
// dead rank) instead of ending this process silently by SIGPIPE.
TEST(Failures, WriteToADeadPeerFailsInsteadOfKillingTheRank) {
  ClusterEnvironment c;
  absl::StatusOr<int> port = strategies::FindFreePort();
  ASSERT_TRUE(port.ok()) << port.status();
  c.master_port = *port;
  absl::StatusOr<std::shared_ptr<DistributedContext>> ctx = Connect(c, absl::Seconds(10));
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  close(fds[1]);  // The peer dies.
  const char byte = 'x';
  for (int i = 0; i < 2; ++i) {
    errno = 0;
    EXPECT_EQ(write(fds[0], &byte, 1), -1);
    EXPECT_EQ(errno, EPIPE);
  }
  close(fds[0]);
}

TEST(Failures, StalledRankTimesOutAndIsTerminated) {
  Job job = LaunchAndRun("stalled_rank", 3);
  ASSERT_NE(job.launcher, nullptr);
  EXPECT_TRUE(job.rank0.ok()) << job.rank0;
  std::optional<std::string> rank1 =
      WaitForFile(ResultPath(job.launcher->cluster(), 1), absl::Seconds(30));
  ASSERT_TRUE(rank1.has_value());
  EXPECT_EQ(*rank1, "OK");
  std::vector<pid_t> pids = job.launcher->child_pids();
  EXPECT_FALSE(IsGone(pids[1])) << "the stalled rank should still be running";
  // The error path: no Finish(); the launcher's destructor ends the stalled
  // rank and reaps everything.
  job.launcher.reset();
  for (pid_t pid : pids) EXPECT_TRUE(IsReaped(pid)) << pid;
}

TEST(Failures, MissingRankAtRendezvousIsNamed) {
  Job job = LaunchAndRun("late_rendezvous", 3);
  ASSERT_NE(job.launcher, nullptr);
  EXPECT_TRUE(job.rank0.ok()) << job.rank0;
  std::optional<std::string> rank1 =
      WaitForFile(ResultPath(job.launcher->cluster(), 1), absl::Seconds(30));
  ASSERT_TRUE(rank1.has_value());
  EXPECT_EQ(*rank1, "OK");
  std::vector<pid_t> pids = job.launcher->child_pids();
  job.launcher.reset();
  for (pid_t pid : pids) EXPECT_TRUE(IsReaped(pid)) << pid;
}

}  // namespace

// Child ranks: run the scenario, leave the verdict in a file and exit.
int ChildMain(const std::string& scenario) {
  absl::StatusOr<strategies::ClusterEnvironment> c = strategies::DetectClusterEnvironment();
  if (!c.ok()) {
    std::cerr << c.status() << "\n";
    return 2;
  }
  absl::Status s = RunScenario(scenario, *c);
  absl::Status written = WriteFile(ResultPath(*c, c->rank), s.ok() ? "OK" : s.ToString());
  if (!s.ok()) std::cerr << "rank " << c->rank << " failed: " << s << "\n";
  return s.ok() && written.ok() ? 0 : 1;
}

}  // namespace fabric::testing

int main(int argc, char** argv) {
  if (getenv("RANK") != nullptr) {
    return fabric::testing::ChildMain(fabric::testing::Env(fabric::testing::kScenario));
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
