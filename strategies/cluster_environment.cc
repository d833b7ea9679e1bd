#include "strategies/cluster_environment.h"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"

namespace fabric::strategies {
namespace {

// An integer variable. `required` makes a missing one an error.
absl::StatusOr<std::optional<int>> ReadInt(const EnvLookup& env,
                                           absl::string_view name,
                                           bool required,
                                           absl::string_view why) {
  std::optional<std::string> raw = env(name);
  if (!raw.has_value()) {
    if (required) {
      return absl::InvalidArgumentError(
          absl::StrCat("environment variable ", name, " is not set ", why));
    }
    return std::optional<int>();
  }
  int value = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*raw), &value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "environment variable ", name, "='", *raw, "' is not an integer"));
  }
  return std::optional<int>(value);
}

absl::Status CheckRange(absl::string_view name, int value, int lo, int hi,
                        absl::string_view hi_what) {
  if (value < lo || value >= hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", name, "=", value,
                     " is out of range: must be >= ", lo, " and < ", hi_what,
                     " (", hi, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckPort(absl::string_view name, int port) {
  if (port < 1 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "environment variable ", name, "=", port, " is not a TCP port (1..65535)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ClusterEnvironment> FromTorchrun(const EnvLookup& env) {
  constexpr absl::string_view kWhy = "(RANK is set, so this is a torchrun-style launch)";
  ClusterEnvironment c;
  c.kind = ClusterKind::kTorchrun;
  std::optional<int> v;
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "RANK", true, kWhy));
  c.rank = *v;
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "WORLD_SIZE", true, kWhy));
  c.world_size = *v;
  if (c.world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "environment variable WORLD_SIZE=", c.world_size, " must be >= 1"));
  }
  FABRIC_RETURN_IF_ERROR(CheckRange("RANK", c.rank, 0, c.world_size, "WORLD_SIZE"));
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "LOCAL_WORLD_SIZE", false, kWhy));
  c.local_world_size = v.value_or(c.world_size);
  if (c.local_world_size < 1 || c.local_world_size > c.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "environment variable LOCAL_WORLD_SIZE=", c.local_world_size,
        " must be >= 1 and <= WORLD_SIZE (", c.world_size, ")"));
  }
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "LOCAL_RANK", false, kWhy));
  c.local_rank = v.value_or(c.rank % c.local_world_size);
  FABRIC_RETURN_IF_ERROR(CheckRange("LOCAL_RANK", c.local_rank, 0, c.local_world_size,
                             "LOCAL_WORLD_SIZE"));
  c.num_nodes = (c.world_size + c.local_world_size - 1) / c.local_world_size;
  // torchrun calls the node rank GROUP_RANK; Lightning uses NODE_RANK.
  absl::string_view node_var = "GROUP_RANK";
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, node_var, false, kWhy));
  if (!v.has_value()) {
    node_var = "NODE_RANK";
    FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, node_var, false, kWhy));
  }
  c.node_rank = v.value_or(c.rank / c.local_world_size);
  FABRIC_RETURN_IF_ERROR(CheckRange(node_var, c.node_rank, 0, c.num_nodes,
                             "WORLD_SIZE / LOCAL_WORLD_SIZE"));
  if (c.world_size % c.local_world_size == 0 &&
      c.rank != c.node_rank * c.local_world_size + c.local_rank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inconsistent torchrun environment: RANK=", c.rank, " but ", node_var,
        "=", c.node_rank, " * LOCAL_WORLD_SIZE=", c.local_world_size,
        " + LOCAL_RANK=", c.local_rank, " = ",
        c.node_rank * c.local_world_size + c.local_rank));
  }
  if (std::optional<std::string> addr = env("MASTER_ADDR"); addr.has_value()) {
    if (addr->empty()) {
      return absl::InvalidArgumentError("environment variable MASTER_ADDR is empty");
    }
    c.master_addr = *addr;
  }
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "MASTER_PORT", true, kWhy));
  c.master_port = *v;
  FABRIC_RETURN_IF_ERROR(CheckPort("MASTER_PORT", c.master_port));
  c.external_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "TORCHELASTIC_RESTART_COUNT", false, kWhy));
  c.restart_count = v.value_or(0);
  return c;
}

absl::StatusOr<ClusterEnvironment> FromSlurm(const EnvLookup& env) {
  constexpr absl::string_view kWhy = "(SLURM_PROCID is set, so this is an srun launch)";
  ClusterEnvironment c;
  c.kind = ClusterKind::kSlurm;
  std::optional<int> v;
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "SLURM_PROCID", true, kWhy));
  c.rank = *v;
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "SLURM_NTASKS", true, kWhy));
  c.world_size = *v;
  if (c.world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "environment variable SLURM_NTASKS=", c.world_size, " must be >= 1"));
  }
  FABRIC_RETURN_IF_ERROR(CheckRange("SLURM_PROCID", c.rank, 0, c.world_size, "SLURM_NTASKS"));
  // SLURM_NNODES is the step's node count, SLURM_JOB_NUM_NODES the job's.
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "SLURM_NNODES", false, kWhy));
  if (!v.has_value()) {
    FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "SLURM_JOB_NUM_NODES", false, kWhy));
  }
  c.num_nodes = v.value_or(1);
  if (c.num_nodes < 1 || c.num_nodes > c.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "environment variable SLURM_NNODES=", c.num_nodes,
        " must be >= 1 and <= SLURM_NTASKS (", c.world_size, ")"));
  }
  if (c.world_size % c.num_nodes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SLURM_NTASKS=", c.world_size, " is not a multiple of SLURM_NNODES=",
        c.num_nodes, ": fabric needs the same number of tasks on every node"));
  }
  c.local_world_size = c.world_size / c.num_nodes;
  // srun --ntasks-per-node=N sets "N"; uneven layouts read "2(x3),1".
  if (std::optional<std::string> per_node = env("SLURM_NTASKS_PER_NODE"); per_node.has_value()) {
    int n = 0;
    absl::string_view text = absl::StripAsciiWhitespace(*per_node);
    if (!absl::SimpleAtoi(text, &n) || n != c.local_world_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "environment variable SLURM_NTASKS_PER_NODE='", *per_node, "' does not match SLURM_NTASKS=",
          c.world_size, " / SLURM_NNODES=", c.num_nodes, " = ", c.local_world_size,
          ": fabric needs the same number of tasks on every node (srun --ntasks-per-node)"));
    }
  }
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "SLURM_LOCALID", true, kWhy));
  c.local_rank = *v;
  FABRIC_RETURN_IF_ERROR(CheckRange("SLURM_LOCALID", c.local_rank, 0, c.local_world_size,
                             "SLURM_NTASKS / SLURM_NNODES"));
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "SLURM_NODEID", false, kWhy));
  c.node_rank = v.value_or(c.rank / c.local_world_size);
  FABRIC_RETURN_IF_ERROR(CheckRange("SLURM_NODEID", c.node_rank, 0, c.num_nodes, "SLURM_NNODES"));

  if (std::optional<std::string> addr = env("MASTER_ADDR"); addr.has_value() && !addr->empty()) {
    c.master_addr = *addr;
  } else if (std::optional<std::string> nodes = env("SLURM_JOB_NODELIST"); nodes.has_value()) {
    FABRIC_ASSIGN_OR_RETURN(c.master_addr, FirstSlurmHost(*nodes, "SLURM_JOB_NODELIST"));
  } else if (std::optional<std::string> step_nodes = env("SLURM_NODELIST");
             step_nodes.has_value()) {
    FABRIC_ASSIGN_OR_RETURN(c.master_addr, FirstSlurmHost(*step_nodes, "SLURM_NODELIST"));
  } else if (c.num_nodes > 1) {
    return absl::InvalidArgumentError(
        "neither MASTER_ADDR nor SLURM_JOB_NODELIST is set: cannot find the main "
        "node of a multi-node SLURM job");
  }
  FABRIC_ASSIGN_OR_RETURN(v, ReadInt(env, "MASTER_PORT", false, kWhy));
  if (v.has_value()) {
    c.master_port = *v;
    FABRIC_RETURN_IF_ERROR(CheckPort("MASTER_PORT", c.master_port));
  } else {
    // Same rule as Lightning: derive the port from the job id so that every
    // task agrees without talking to each other.
    std::optional<std::string> job = env("SLURM_JOB_ID");
    int port = 12910;
    if (job.has_value() && !job->empty()) {
      std::string tail = job->size() > 4 ? job->substr(job->size() - 4) : *job;
      int digits = 0;
      if (!absl::SimpleAtoi(tail, &digits)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "environment variable SLURM_JOB_ID='", *job, "' is not numeric"));
      }
      port = 15000 + digits;
    }
    c.master_port = port;
  }
  return c;
}

}  // namespace

absl::string_view ClusterKindName(ClusterKind kind) {
  switch (kind) {
    case ClusterKind::kNone:
      return "none";
    case ClusterKind::kTorchrun:
      return "torchrun";
    case ClusterKind::kSlurm:
      return "slurm";
  }
  return "unknown";
}

std::string DescribeRanks(const ClusterEnvironment& cluster, const std::vector<int>& ranks) {
  std::string text = absl::StrJoin(ranks, ", ");
  if (cluster.num_nodes <= 1 || cluster.local_world_size < 1 || ranks.empty()) return text;
  std::vector<int> nodes;
  for (int r : ranks) {
    const int node = r / cluster.local_world_size;
    if (nodes.empty() || nodes.back() != node) nodes.push_back(node);
  }
  return absl::StrCat(text, " (node", nodes.size() > 1 ? "s " : " ", absl::StrJoin(nodes, ", "),
                      ")");
}

EnvLookup ProcessEnv() {
  return [](absl::string_view name) -> std::optional<std::string> {
    const char* value = std::getenv(std::string(name).c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

absl::StatusOr<std::string> FirstSlurmHost(absl::string_view nodelist,
                                           absl::string_view variable) {
  nodelist = absl::StripAsciiWhitespace(nodelist);
  if (nodelist.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("environment variable ", variable, " is empty"));
  }
  // The first entry: up to a separator outside brackets.
  size_t end = 0;
  for (int depth = 0; end < nodelist.size(); ++end) {
    const char ch = nodelist[end];
    if (ch == '[') ++depth;
    if (ch == ']') --depth;
    if (depth == 0 && (ch == ',' || ch == ' ')) break;
  }
  absl::string_view first = nodelist.substr(0, end);
  const size_t open = first.find('[');
  if (open == absl::string_view::npos) return std::string(first);
  // "node[01-04,07]suffix": the range's first value keeps its zero padding.
  const size_t close = first.find(']', open);
  absl::string_view inside =
      close == absl::string_view::npos ? absl::string_view() : first.substr(open + 1, close - open - 1);
  absl::string_view head = inside.substr(0, inside.find_first_of(",-"));
  if (head.empty() || !std::all_of(head.begin(), head.end(), absl::ascii_isdigit)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "environment variable ", variable, "='", nodelist,
        "' is not a SLURM host list (expected e.g. node[01-04,07])"));
  }
  return absl::StrCat(first.substr(0, open), head, first.substr(close + 1));
}

absl::StatusOr<ClusterEnvironment> DetectClusterEnvironment(const EnvLookup& env) {
  if (env("RANK").has_value()) return FromTorchrun(env);
  for (absl::string_view name : {"WORLD_SIZE", "LOCAL_RANK"}) {
    if (env(name).has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "environment variable ", name,
          " is set but RANK is not: set RANK too (torchrun-style launch) or "
          "unset ", name, " (let fabric launch the processes)"));
    }
  }
  const std::string job_name = env("SLURM_JOB_NAME").value_or("");
  const bool interactive = job_name == "bash" || job_name == "interactive";
  if (env("SLURM_PROCID").has_value() && env("SLURM_NTASKS").has_value() && !interactive) {
    return FromSlurm(env);
  }
  return ClusterEnvironment{};
}

}  // namespace fabric::strategies
