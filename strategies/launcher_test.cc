#include "strategies/launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace fabric::strategies {
namespace {

constexpr char kRole[] = "FABRIC_LAUNCHER_TEST_ROLE";

EnvLookup MapEnv(absl::flat_hash_map<std::string, std::string> vars) {
  return [vars = std::move(vars)](absl::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

// A pid that no longer runs: gone from /proc, or a zombie nobody reaped yet.
bool IsGone(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat) return true;
  std::string line;
  std::getline(stat, line);
  size_t paren = line.rfind(')');
  return paren != std::string::npos && line.size() > paren + 2 && line[paren + 2] == 'Z';
}

bool WaitGone(pid_t pid, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!IsGone(pid)) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir ? dir : "/tmp", "/", name);
}

LaunchOptions Options(int devices, int num_nodes = 1) {
  LaunchOptions options;
  options.devices = devices;
  options.num_nodes = num_nodes;
  return options;
}

TEST(Launcher, JoinsTorchrunEnvironment) {
  auto launcher = Launcher::Launch(
      Options(2),
      MapEnv({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"}, {"MASTER_PORT", "4000"}}));
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  EXPECT_FALSE((*launcher)->is_launcher());
  EXPECT_TRUE((*launcher)->child_pids().empty());
  EXPECT_EQ((*launcher)->cluster().rank, 1);
  EXPECT_EQ((*launcher)->cluster().master_port, 4000);
}

TEST(Launcher, JoinRejectsOtherDeviceCount) {
  auto launcher = Launcher::Launch(
      Options(4),
      MapEnv({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "4000"}}));
  ASSERT_FALSE(launcher.ok());
  EXPECT_NE(launcher.status().message().find("LOCAL_WORLD_SIZE"), std::string::npos)
      << launcher.status();
}

TEST(Launcher, MultiNodeNeedsNodeRank) {
  auto launcher = Launcher::Launch(Options(2, 2),
                                   MapEnv({{"MASTER_ADDR", "h"}, {"MASTER_PORT", "5"}}));
  ASSERT_FALSE(launcher.ok());
  EXPECT_NE(launcher.status().message().find("NODE_RANK"), std::string::npos)
      << launcher.status();
}

TEST(Launcher, MultiNodeWithoutChildrenComputesRank) {
  // devices = 1: no process to start, but the ranks come from NODE_RANK.
  auto launcher = Launcher::Launch(
      Options(1, 3),
      MapEnv({{"NODE_RANK", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "5"}}));
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  EXPECT_EQ((*launcher)->cluster().rank, 2);
  EXPECT_EQ((*launcher)->cluster().world_size, 3);
  EXPECT_EQ((*launcher)->cluster().master_addr, "h");
}

TEST(Launcher, NodeOptionsFillWhatTheEnvironmentLacks) {
  LaunchOptions options = Options(1, 2);
  options.node_rank = 1;
  options.main_address = "10.1.2.3";
  options.main_port = 4100;
  auto launcher = Launcher::Launch(options, MapEnv({}));
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  const ClusterEnvironment& c = (*launcher)->cluster();
  EXPECT_EQ(c.rank, 1);
  EXPECT_EQ(c.node_rank, 1);
  EXPECT_EQ(c.world_size, 2);
  EXPECT_EQ(c.master_addr, "10.1.2.3");
  EXPECT_EQ(c.master_port, 4100);
  // The same values in the environment too: fine.
  launcher = Launcher::Launch(options, MapEnv({{"NODE_RANK", "1"}, {"MASTER_ADDR", "10.1.2.3"},
                                               {"MASTER_PORT", "4100"}}));
  ASSERT_TRUE(launcher.ok()) << launcher.status();
}

TEST(Launcher, OptionsThatDisagreeWithTheEnvironmentAreNamed) {
  struct Case {
    absl::flat_hash_map<std::string, std::string> env;
    std::string mentions;
  };
  const Case cases[] = {
      {{{"NODE_RANK", "0"}}, "--node_rank=1 but environment variable NODE_RANK=0"},
      {{{"GROUP_RANK", "0"}}, "--node_rank=1 but environment variable GROUP_RANK=0"},
      {{{"MASTER_ADDR", "10.9.9.9"}},
       "--main_address=10.1.2.3 but environment variable MASTER_ADDR=10.9.9.9"},
      {{{"MASTER_PORT", "4200"}}, "--main_port=4100 but environment variable MASTER_PORT=4200"},
      // Joined (torchrun): every option is checked against the job.
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_WORLD_SIZE", "1"}, {"GROUP_RANK", "0"},
        {"MASTER_ADDR", "10.1.2.3"}, {"MASTER_PORT", "4100"}},
       "--node_rank=1 but the torchrun environment has 0 (GROUP_RANK)"},
      {{{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_WORLD_SIZE", "1"}, {"GROUP_RANK", "1"},
        {"MASTER_ADDR", "10.1.2.4"}, {"MASTER_PORT", "4100"}},
       "--main_address=10.1.2.3 but the torchrun environment has 10.1.2.4"},
      {{{"RANK", "1"}, {"WORLD_SIZE", "3"}, {"LOCAL_WORLD_SIZE", "1"}, {"GROUP_RANK", "1"},
        {"MASTER_ADDR", "10.1.2.3"}, {"MASTER_PORT", "4100"}},
       "--num_nodes=2 but the torchrun environment has 3"},
      {{{"SLURM_PROCID", "1"}, {"SLURM_LOCALID", "0"}, {"SLURM_NTASKS", "2"},
        {"SLURM_NNODES", "2"}, {"SLURM_NODEID", "1"}, {"SLURM_JOB_NODELIST", "n[1-2]"},
        {"MASTER_PORT", "4100"}},
       "--main_address=10.1.2.3 but the slurm environment has n1"},
  };
  for (const Case& test : cases) {
    LaunchOptions options = Options(1, 2);
    options.node_rank = 1;
    options.main_address = "10.1.2.3";
    options.main_port = 4100;
    options.option_prefix = "--";
    auto launcher = Launcher::Launch(options, MapEnv(test.env));
    ASSERT_FALSE(launcher.ok()) << test.mentions;
    EXPECT_NE(launcher.status().message().find(test.mentions), std::string::npos)
        << launcher.status() << "\nshould mention: " << test.mentions;
  }
}

TEST(Launcher, JoinDerivesDevicesAndNodesFromTheEnvironment) {
  // torchrun --nnodes=3 --nproc-per-node=2 (any layout): devices = 0 and
  // num_nodes = 0 take it.
  auto launcher = Launcher::Launch(
      Options(0, 0), MapEnv({{"RANK", "3"}, {"WORLD_SIZE", "6"}, {"LOCAL_WORLD_SIZE", "2"},
                             {"LOCAL_RANK", "1"}, {"GROUP_RANK", "1"}, {"MASTER_PORT", "4000"}}));
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  EXPECT_EQ((*launcher)->cluster().local_world_size, 2);
  EXPECT_EQ((*launcher)->cluster().num_nodes, 3);
  EXPECT_EQ((*launcher)->cluster().node_rank, 1);
}

TEST(Launcher, MultiNodeNeedsAddressAndPort) {
  LaunchOptions options = Options(1, 2);
  options.node_rank = 0;
  auto launcher = Launcher::Launch(options, MapEnv({{"MASTER_PORT", "5"}}));
  ASSERT_FALSE(launcher.ok());
  EXPECT_NE(launcher.status().message().find("main_address (or environment variable MASTER_ADDR)"),
            std::string::npos)
      << launcher.status();
  launcher = Launcher::Launch(options, MapEnv({{"MASTER_ADDR", "h"}}));
  ASSERT_FALSE(launcher.ok());
  EXPECT_NE(launcher.status().message().find("main_port (or environment variable MASTER_PORT)"),
            std::string::npos)
      << launcher.status();
  options.node_rank = 2;
  launcher = Launcher::Launch(options, MapEnv({{"MASTER_ADDR", "h"}, {"MASTER_PORT", "5"}}));
  ASSERT_FALSE(launcher.ok());
  EXPECT_NE(launcher.status().message().find("out of range"), std::string::npos)
      << launcher.status();
}

TEST(Launcher, WatchChildrenReportsAFailureAtOnceAndFinishStillReaps) {
  LaunchOptions options = Options(3);
  options.extra_env = {{kRole, "exit_if_rank_2"}};
  auto launcher = Launcher::Launch(options, MapEnv({}));
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  std::mutex mu;
  std::vector<std::string> failures;
  (*launcher)->WatchChildren([&](const std::string& failure) {
    std::lock_guard<std::mutex> lock(mu);
    failures.push_back(failure);
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!failures.empty() || absl::Now() > deadline) break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  const std::vector<pid_t> pids = (*launcher)->child_pids();
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(failures.size(), 1u);
    EXPECT_EQ(failures[0],
              absl::StrCat("rank 2 (local rank 2, pid ", pids[1], ") exited with status 3"));
  }
  absl::Status finished = (*launcher)->Finish(absl::Seconds(20));
  EXPECT_FALSE(finished.ok());
  EXPECT_NE(finished.message().find("rank 2"), std::string::npos) << finished;
  (*launcher)->StopWatching();
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(failures.size(), 1u) << "rank 1 exited with 0: not a failure";
}

TEST(Launcher, ChildrenGetTorchrunEnvironment) {
  const std::string out = TempPath("env_dump");
  LaunchOptions options = Options(3);
  options.extra_env = {{kRole, "dump_env"}, {"FABRIC_DUMP", out}};
  auto launcher = Launcher::Launch(options, MapEnv({}));
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  const ClusterEnvironment& c = (*launcher)->cluster();
  EXPECT_EQ(c.rank, 0);
  EXPECT_EQ(c.world_size, 3);
  EXPECT_GT(c.master_port, 0);
  ASSERT_EQ((*launcher)->child_pids().size(), 2u);
  ASSERT_TRUE((*launcher)->Finish(absl::Seconds(30)).ok());
  for (int rank = 1; rank < 3; ++rank) {
    std::ifstream in(absl::StrCat(out, ".", rank));
    std::stringstream text;
    text << in.rdbuf();
    EXPECT_EQ(text.str(), absl::StrCat("rank=", rank, " local_rank=", rank,
                                       " world=3 local_world=3 node=0 addr=127.0.0.1 port=",
                                       c.master_port));
  }
}

TEST(Launcher, FinishNamesTheFailedRank) {
  LaunchOptions options = Options(3);
  options.extra_env = {{kRole, "exit_if_rank_2"}};
  auto launcher = Launcher::Launch(options, MapEnv({}));
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  std::vector<pid_t> pids = (*launcher)->child_pids();
  absl::Status status = (*launcher)->Finish(absl::Seconds(30));
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find(absl::StrCat("rank 2 (local rank 2, pid ", pids[1],
                                               ") exited with status 3")),
            std::string::npos)
      << status;
  EXPECT_EQ(status.message().find("rank 1"), std::string::npos) << status;
  for (pid_t pid : pids) EXPECT_TRUE(IsGone(pid)) << pid;
}

TEST(Launcher, FinishReportsSignals) {
  LaunchOptions options = Options(2);
  options.extra_env = {{kRole, "sigkill"}};
  auto launcher = Launcher::Launch(options, MapEnv({}));
  ASSERT_TRUE(launcher.ok()) << launcher.status();
  absl::Status status = (*launcher)->Finish(absl::Seconds(30));
  EXPECT_NE(status.message().find("rank 1"), std::string::npos) << status;
  EXPECT_NE(status.message().find("killed by signal 9"), std::string::npos) << status;
}

TEST(Launcher, DestructorKillsAndReapsChildren) {
  LaunchOptions options = Options(3);
  options.extra_env = {{kRole, "sleep"}};
  std::vector<pid_t> pids;
  {
    auto launcher = Launcher::Launch(options, MapEnv({}));
    ASSERT_TRUE(launcher.ok()) << launcher.status();
    pids = (*launcher)->child_pids();
    ASSERT_EQ(pids.size(), 2u);
    EXPECT_TRUE((*launcher)->CheckChildren().ok());
    EXPECT_EQ((*launcher)->Finish(absl::Milliseconds(100)).code(),
              absl::StatusCode::kDeadlineExceeded);
    for (pid_t pid : pids) EXPECT_FALSE(IsGone(pid));
  }
  // Reaped by the destructor: not even a zombie is left.
  for (pid_t pid : pids) {
    EXPECT_FALSE(std::ifstream(absl::StrCat("/proc/", pid, "/stat")).good()) << pid;
  }
}

TEST(Launcher, ChildrenDieWithAKilledLauncher) {
  // A launcher process (this binary in role "orphan_parent") starts two
  // sleeping children and writes their pids; we SIGKILL it, so neither its
  // destructor nor its handlers run: PR_SET_PDEATHSIG must end the children.
  const std::string pid_file = TempPath("orphan_pids");
  std::remove(pid_file.c_str());
  pid_t parent = fork();
  ASSERT_GE(parent, 0);
  if (parent == 0) {
    setenv(kRole, "orphan_parent", 1);
    setenv("FABRIC_DUMP", pid_file.c_str(), 1);
    execl("/proc/self/exe", "launcher_test", nullptr);
    _exit(127);
  }
  std::vector<pid_t> pids;
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (pids.empty() && absl::Now() < deadline) {
    std::ifstream in(pid_file);
    std::string line;
    if (std::getline(in, line) && line.back() == ';') {
      for (absl::string_view p : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
        int pid = 0;
        if (absl::SimpleAtoi(absl::StripSuffix(p, ";"), &pid)) pids.push_back(pid);
      }
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(pids.size(), 2u);
  kill(parent, SIGKILL);
  int status = 0;
  waitpid(parent, &status, 0);
  for (pid_t pid : pids) EXPECT_TRUE(WaitGone(pid, absl::Seconds(10))) << pid;
}

// Roles of the re-executed children (and of the launcher in the last test).
int RunRole(const std::string& role) {
  auto env = [](const char* name) { return std::string(std::getenv(name) ? std::getenv(name) : "?"); };
  if (role == "dump_env") {
    std::ofstream(absl::StrCat(env("FABRIC_DUMP"), ".", env("RANK")))
        << "rank=" << env("RANK") << " local_rank=" << env("LOCAL_RANK")
        << " world=" << env("WORLD_SIZE") << " local_world=" << env("LOCAL_WORLD_SIZE")
        << " node=" << env("NODE_RANK") << " addr=" << env("MASTER_ADDR")
        << " port=" << env("MASTER_PORT");
    return 0;
  }
  if (role == "exit_if_rank_2") return env("RANK") == "2" ? 3 : 0;
  if (role == "sigkill") raise(SIGKILL);
  if (role == "sleep") {
    for (;;) pause();
  }
  if (role == "orphan_parent") {
    LaunchOptions options = Options(3);
    options.extra_env = {{kRole, "sleep"}};
    auto launcher = Launcher::Launch(options);
    if (!launcher.ok()) return 2;
    {
      std::ofstream out(env("FABRIC_DUMP") + ".tmp");
      for (pid_t pid : (*launcher)->child_pids()) out << pid << " ";
      out << ";\n";
    }
    std::rename((env("FABRIC_DUMP") + ".tmp").c_str(), env("FABRIC_DUMP").c_str());
    for (;;) pause();
  }
  return 100;
}

}  // namespace
}  // namespace fabric::strategies

int main(int argc, char** argv) {
  if (const char* role = std::getenv(fabric::strategies::kRole)) {
    return fabric::strategies::RunRole(role);
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
