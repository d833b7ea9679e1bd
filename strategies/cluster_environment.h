#ifndef FABRIC_STRATEGIES_CLUSTER_ENVIRONMENT_H_
#define FABRIC_STRATEGIES_CLUSTER_ENVIRONMENT_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fabric::strategies {

// Where this process's rank information came from.
enum class ClusterKind {
  kNone,      // No launcher variables: this process is the user's launch.
  kTorchrun,  // RANK / WORLD_SIZE / ... (torchrun, or our own launcher).
  kSlurm,     // SLURM_PROCID / SLURM_NTASKS / ... (srun).
};

absl::string_view ClusterKindName(ClusterKind kind);

// Who am I in the job. For kNone it describes a single process (rank 0 of 1),
// which becomes the launcher of the local ranks.
struct ClusterEnvironment {
  ClusterKind kind = ClusterKind::kNone;
  int rank = 0;
  int local_rank = 0;
  int world_size = 1;
  int local_world_size = 1;
  int node_rank = 0;
  int num_nodes = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: not known (launcher picks one).
  // torchrun's agent already hosts the TCPStore at master_addr:master_port
  // (TORCHELASTIC_USE_AGENT_STORE=True): rank 0 connects instead of hosting.
  bool external_store = false;
  // torchrun's restart count (TORCHELASTIC_RESTART_COUNT): keeps the keys of
  // a restarted group apart from the last attempt's in a long-lived store.
  int restart_count = 0;

  // No launcher variables: the local ranks still have to be started.
  bool needs_launch() const { return kind == ClusterKind::kNone; }
  bool is_rank_zero() const { return rank == 0; }
};

// "2, 3 (node 1)": ranks, with their nodes when there are several.
std::string DescribeRanks(const ClusterEnvironment& cluster, const std::vector<int>& ranks);

// Reads one environment variable; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(absl::string_view)>;

// Reads the process environment (getenv).
EnvLookup ProcessEnv();

// Detects the cluster from the environment. Torchrun variables win over
// SLURM ones (torchrun inside an srun allocation sets both). SLURM counts only
// for tasks started by srun: an allocation's interactive shell
// (SLURM_JOB_NAME bash or interactive, as in Lightning) is a plain launch.
// Errors name the offending variable.
absl::StatusOr<ClusterEnvironment> DetectClusterEnvironment(
    const EnvLookup& env = ProcessEnv());

// First host of a SLURM node list: "node[003-005,9],gpu1" -> "node003",
// "a1 a2" -> "a1". `variable` names the list in errors.
absl::StatusOr<std::string> FirstSlurmHost(absl::string_view nodelist,
                                           absl::string_view variable = "SLURM_JOB_NODELIST");

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_CLUSTER_ENVIRONMENT_H_
