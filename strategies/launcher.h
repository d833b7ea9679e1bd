#ifndef FABRIC_STRATEGIES_LAUNCHER_H_
#define FABRIC_STRATEGIES_LAUNCHER_H_

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "strategies/cluster_environment.h"

namespace fabric::strategies {

struct LaunchOptions {
  // Processes on this node. 0: from the environment when joining
  // (LOCAL_WORLD_SIZE / SLURM), else 1.
  int devices = 1;
  // Nodes. 0: from the environment when joining, else 1.
  int num_nodes = 1;
  // This node's rank. -1: $NODE_RANK (or $GROUP_RANK); needed with
  // num_nodes > 1.
  int node_rank = -1;
  // Rendezvous address (node 0's); empty: $MASTER_ADDR, else 127.0.0.1
  // (single node only).
  std::string main_address;
  // Rendezvous port; 0: $MASTER_PORT, else a free port (single node only).
  int main_port = 0;
  // How errors name the five settings above: "LaunchOptions.num_nodes",
  // or "--num_nodes" with prefix "--".
  std::string option_prefix = "LaunchOptions.";
  // Program and arguments of the local ranks 1..devices-1. Empty: this
  // process's own (/proc/self/exe with /proc/self/cmdline).
  std::string executable;
  std::vector<std::string> argv;
  // Extra variables for the children (on top of this process's environment).
  std::vector<std::pair<std::string, std::string>> extra_env;
};

// Lightning's subprocess launcher: the process the user started (no RANK in
// its environment) becomes local rank 0 and starts local ranks 1..devices-1
// by re-executing the same binary with torchrun-style variables (RANK,
// LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, NODE_RANK,
// MASTER_ADDR, MASTER_PORT). A process that already has them (started by us,
// torchrun or srun) just joins: no children.
//
// Children never outlive the launcher: they get PR_SET_PDEATHSIG(SIGTERM)
// (tied to the thread that called Launch(), so call it from the main thread),
// and the launcher terminates and reaps them when it is destroyed without
// Finish(), on exit() and on SIGINT/SIGTERM/SIGHUP.
//
// Settings given both as options and in the environment must agree (an
// error names both); a joined process checks the options it was given
// against its launcher's variables, so every node runs the same job.
// Several nodes: run the same program on each node with its node rank and
// node 0's address and port; each starts its local ranks with global ranks
// node_rank * devices + local_rank.
//
// The launcher does not change this process's environment: take the
// rank information from cluster().
class Launcher {
 public:
  static absl::StatusOr<std::unique_ptr<Launcher>> Launch(
      const LaunchOptions& options, const EnvLookup& env = ProcessEnv());

  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;
  // Terminates and reaps children still running (the error path: the normal
  // one calls Finish() first).
  ~Launcher();

  const ClusterEnvironment& cluster() const { return cluster_; }
  // True for the process that started the local ranks.
  bool is_launcher() const { return !children_.empty(); }
  // Pid of local rank i+1 (empty when joined).
  std::vector<pid_t> child_pids() const;

  // Waits until every child has exited. OK when all exited with status 0;
  // otherwise terminates the others and returns an error naming each failed
  // rank and how it ended ("rank 2 (pid 123) was killed by signal 9 (Killed)").
  // DeadlineExceeded (children left running) when `timeout` passes first.
  absl::Status Finish(absl::Duration timeout = absl::InfiniteDuration());

  // Non-blocking: an error if some child has already exited non-zero (for
  // better error messages when a collective fails on this rank).
  absl::Status CheckChildren();

  // SIGTERM to the children still running, SIGKILL after `grace`, and reap.
  void Terminate(absl::Duration grace = absl::Seconds(3));

  // Calls `on_failure` from a background thread, once per child, as soon as
  // a child ends with a non-zero status ("rank 3 (node 1, local rank 1, pid
  // 77) was killed by signal 9 (Killed)"), so that the other nodes can be
  // told at once. Reaping stays with Finish/CheckChildren.
  void WatchChildren(std::function<void(const std::string& failure)> on_failure);
  // Stops the watching thread (also done by the destructor).
  void StopWatching();

 private:
  struct Child {
    int rank = 0;
    int local_rank = 0;
    pid_t pid = -1;
    bool reaped = false;
    int wait_status = 0;
  };

  Launcher() = default;
  absl::Status Spawn(const LaunchOptions& options);
  // Reaps the children that have exited; returns how many are still running.
  int Poll();
  std::string Describe(const Child& child) const;
  std::string DescribeRank(const Child& child, int wait_status) const;

  ClusterEnvironment cluster_;
  std::vector<Child> children_;
  std::thread watcher_;
  std::atomic<bool> stop_watching_{false};
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_LAUNCHER_H_
