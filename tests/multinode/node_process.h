#ifndef FABRIC_TESTS_MULTINODE_NODE_PROCESS_H_
#define FABRIC_TESTS_MULTINODE_NODE_PROCESS_H_

// One "node" of a multi-node test: a real launcher process (our trainer,
// torchrun, or one srun-style task) started in its own process group, with
// its output in a log file; plus the network namespaces that stand in for
// separate machines.

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace fabric::testing {

class NodeProcess {
 public:
  // Starts `argv` (argv[0] a path, or a name found on PATH) with `env` added
  // to this process's environment; stdout and stderr go to `log`.
  static absl::StatusOr<NodeProcess> Start(const std::vector<std::string>& argv,
                                           const std::map<std::string, std::string>& env,
                                           const std::string& log);

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_; }
  std::string Log() const;

  // Waits up to `timeout` for the launcher to exit; its wait status, or
  // nullopt if it still runs.
  std::optional<int> Wait(absl::Duration timeout);
  // Every process of its group (the launcher and the ranks it started).
  std::vector<pid_t> Group() const;
  // Sends `sig` to the whole process group.
  void SignalGroup(int sig) const;
  // SIGKILLs whatever is left of the group and reaps the launcher.
  void KillAll();

 private:
  pid_t pid_ = -1;
  std::string log_;
  bool reaped_ = false;
  int status_ = 0;
};

// True when `pid` no longer runs (reaped, gone, or a zombie).
bool Gone(pid_t pid);

// "exited with status 1", "was killed by signal 9".
std::string DescribeStatus(int status);

// Two network namespaces joined by a veth pair, each end with a private
// test address (10.250.0.1/24 and 10.250.0.2/24) and loopback up: two
// "machines" whose traffic goes over the veth. Removed on destruction.
class NamespacePair {
 public:
  // Error when this sandbox does not allow namespaces (not root, no `ip`).
  static absl::StatusOr<std::unique_ptr<NamespacePair>> Create();
  ~NamespacePair();

  const std::string& ns(int node) const { return names_[node]; }
  std::string address(int node) const { return node == 0 ? "10.250.0.1" : "10.250.0.2"; }
  // argv prefix that runs a command inside node's namespace.
  std::vector<std::string> Exec(int node) const { return {"ip", "netns", "exec", names_[node]}; }

 private:
  NamespacePair() = default;
  std::string names_[2];
};

}  // namespace fabric::testing

#endif  // FABRIC_TESTS_MULTINODE_NODE_PROCESS_H_
