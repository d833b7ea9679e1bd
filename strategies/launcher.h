#ifndef FABRIC_STRATEGIES_LAUNCHER_H_
#define FABRIC_STRATEGIES_LAUNCHER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "strategies/cluster_environment.h"

namespace fabric::strategies {

struct LaunchOptions {
  // Processes on this node. 0: take it from the environment when joining
  // (LOCAL_WORLD_SIZE / SLURM), else 1.
  int devices = 1;
  int num_nodes = 1;
  // Rendezvous address; empty: $MASTER_ADDR, else 127.0.0.1.
  std::string master_addr;
  // Rendezvous port; 0: $MASTER_PORT, else a free port (single node only).
  int master_port = 0;
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

  ClusterEnvironment cluster_;
  std::vector<Child> children_;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_LAUNCHER_H_
