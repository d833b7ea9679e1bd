#include "strategies/cluster_environment.h"

#include <optional>
#include <string>
#include "absl/strings/string_view.h"

#include <gtest/gtest.h>

#include "absl/container/flat_hash_map.h"

namespace fabric::strategies {
namespace {

EnvLookup MapEnv(absl::flat_hash_map<std::string, std::string> vars) {
  return [vars = std::move(vars)](absl::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(ClusterEnvironment, NothingMeansWeLaunch) {
  absl::StatusOr<ClusterEnvironment> c = DetectClusterEnvironment(MapEnv({{"HOME", "/root"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, ClusterKind::kNone);
  EXPECT_TRUE(c->needs_launch());
  EXPECT_EQ(c->rank, 0);
  EXPECT_EQ(c->world_size, 1);
}

TEST(ClusterEnvironment, Torchrun) {
  absl::StatusOr<ClusterEnvironment> c = DetectClusterEnvironment(MapEnv({
      {"RANK", "5"}, {"LOCAL_RANK", "1"}, {"WORLD_SIZE", "8"}, {"LOCAL_WORLD_SIZE", "4"},
      {"GROUP_RANK", "1"}, {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29501"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, ClusterKind::kTorchrun);
  EXPECT_FALSE(c->needs_launch());
  EXPECT_EQ(c->rank, 5);
  EXPECT_EQ(c->local_rank, 1);
  EXPECT_EQ(c->world_size, 8);
  EXPECT_EQ(c->local_world_size, 4);
  EXPECT_EQ(c->node_rank, 1);
  EXPECT_EQ(c->num_nodes, 2);
  EXPECT_EQ(c->master_addr, "10.0.0.1");
  EXPECT_EQ(c->master_port, 29501);
}

TEST(ClusterEnvironment, TorchrunDefaults) {
  absl::StatusOr<ClusterEnvironment> c = DetectClusterEnvironment(
      MapEnv({{"RANK", "2"}, {"WORLD_SIZE", "3"}, {"MASTER_PORT", "1234"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->local_rank, 2);
  EXPECT_EQ(c->local_world_size, 3);
  EXPECT_EQ(c->node_rank, 0);
  EXPECT_EQ(c->num_nodes, 1);
  EXPECT_EQ(c->master_addr, "127.0.0.1");
}

TEST(ClusterEnvironment, ErrorsNameTheVariable) {
  struct Case {
    absl::flat_hash_map<std::string, std::string> vars;
    std::string mentions;
  };
  const Case cases[] = {
      {{{"RANK", "x"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}}, "RANK='x'"},
      {{{"RANK", "0"}, {"MASTER_PORT", "1"}}, "WORLD_SIZE is not set"},
      {{{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}}, "RANK=2 is out of range"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "0"}, {"MASTER_PORT", "1"}}, "WORLD_SIZE=0"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}}, "MASTER_PORT is not set"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}, "MASTER_PORT=70000"},
      {{{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_WORLD_SIZE", "2"}, {"LOCAL_RANK", "2"},
        {"MASTER_PORT", "5"}},
       "LOCAL_RANK=2"},
      {{{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_WORLD_SIZE", "8"}, {"MASTER_PORT", "5"}},
       "LOCAL_WORLD_SIZE=8"},
      {{{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"},
        {"GROUP_RANK", "0"}, {"MASTER_PORT", "5"}},
       "inconsistent"},
      {{{"WORLD_SIZE", "2"}}, "WORLD_SIZE is set but RANK is not"},
      {{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_NNODES", "3"}}, "SLURM_NNODES=3"},
      {{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}}, "SLURM_LOCALID is not set"},
      {{{"SLURM_PROCID", "9"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}}, "SLURM_PROCID=9"},
  };
  for (const Case& test : cases) {
    absl::StatusOr<ClusterEnvironment> c = DetectClusterEnvironment(MapEnv(test.vars));
    ASSERT_FALSE(c.ok()) << test.mentions;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find(test.mentions), absl::string_view::npos)
        << c.status() << " should mention " << test.mentions;
  }
}

TEST(ClusterEnvironment, Slurm) {
  absl::StatusOr<ClusterEnvironment> c = DetectClusterEnvironment(MapEnv({
      {"SLURM_PROCID", "3"}, {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS", "4"},
      {"SLURM_NODEID", "1"}, {"SLURM_NNODES", "2"}, {"SLURM_NODELIST", "gpu[007-008]"},
      {"SLURM_JOB_ID", "1234567"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, ClusterKind::kSlurm);
  EXPECT_EQ(c->rank, 3);
  EXPECT_EQ(c->local_rank, 1);
  EXPECT_EQ(c->world_size, 4);
  EXPECT_EQ(c->local_world_size, 2);
  EXPECT_EQ(c->node_rank, 1);
  EXPECT_EQ(c->num_nodes, 2);
  EXPECT_EQ(c->master_addr, "gpu007");
  EXPECT_EQ(c->master_port, 15000 + 4567);
}

TEST(ClusterEnvironment, TorchrunWinsOverSlurm) {
  absl::StatusOr<ClusterEnvironment> c = DetectClusterEnvironment(MapEnv(
      {{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_PORT", "7"}, {"SLURM_PROCID", "0"},
       {"SLURM_NTASKS", "1"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, ClusterKind::kTorchrun);
}

TEST(ClusterEnvironment, FirstSlurmHost) {
  EXPECT_EQ(*FirstSlurmHost("node1"), "node1");
  EXPECT_EQ(*FirstSlurmHost("node1,node2"), "node1");
  EXPECT_EQ(*FirstSlurmHost("node[003-005,9],gpu1"), "node003");
  EXPECT_EQ(*FirstSlurmHost("a,b[1-2]"), "a");
  EXPECT_EQ(*FirstSlurmHost("x[12]"), "x12");
  EXPECT_FALSE(FirstSlurmHost("x[").ok());
  EXPECT_FALSE(FirstSlurmHost("").ok());
  EXPECT_EQ(*FirstSlurmHost("node[01-04,07]"), "node01");
  EXPECT_EQ(*FirstSlurmHost("node[07,01-04]"), "node07");
  EXPECT_EQ(*FirstSlurmHost("rack[2-3]-gpu[01-02],login"), "rack2-gpu[01-02]")
      << "only the first bracket of an entry is a range here";
  EXPECT_EQ(*FirstSlurmHost("host0 host1"), "host0");
  EXPECT_EQ(*FirstSlurmHost("127.0.0.[1-2]"), "127.0.0.1");
  absl::StatusOr<std::string> bad = FirstSlurmHost("n[a-b]", "SLURM_JOB_NODELIST");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("SLURM_JOB_NODELIST='n[a-b]'"), std::string::npos)
      << bad.status();
}

TEST(ClusterEnvironment, SlurmJobNodelistAndTasksPerNode) {
  absl::StatusOr<ClusterEnvironment> c = DetectClusterEnvironment(MapEnv({
      {"SLURM_PROCID", "5"}, {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS", "8"},
      {"SLURM_NODEID", "2"}, {"SLURM_JOB_NUM_NODES", "4"}, {"SLURM_NTASKS_PER_NODE", "2"},
      {"SLURM_JOB_NODELIST", "node[01-04,07]"}, {"SLURM_NODELIST", "other1"},
      {"SLURM_JOB_ID", "77"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_nodes, 4);
  EXPECT_EQ(c->local_world_size, 2);
  EXPECT_EQ(c->node_rank, 2);
  EXPECT_EQ(c->master_addr, "node01");
  EXPECT_EQ(c->master_port, 15077);

  c = DetectClusterEnvironment(MapEnv({{"SLURM_PROCID", "0"}, {"SLURM_LOCALID", "0"},
                                       {"SLURM_NTASKS", "4"}, {"SLURM_NNODES", "2"},
                                       {"SLURM_NTASKS_PER_NODE", "4"},
                                       {"SLURM_JOB_NODELIST", "a,b"}}));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("SLURM_NTASKS_PER_NODE='4'"), std::string::npos)
      << c.status();
}

TEST(ClusterEnvironment, InteractiveSlurmShellIsAPlainLaunch) {
  // srun --pty bash inside an allocation: Lightning launches from there.
  for (const char* name : {"bash", "interactive"}) {
    absl::StatusOr<ClusterEnvironment> c = DetectClusterEnvironment(
        MapEnv({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"SLURM_JOB_NAME", name}}));
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(c->needs_launch()) << name;
  }
}

TEST(ClusterEnvironment, TorchrunAgentStore) {
  absl::StatusOr<ClusterEnvironment> c = DetectClusterEnvironment(MapEnv(
      {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "29500"},
       {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "2"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->external_store);
  EXPECT_EQ(c->restart_count, 2);
  c = DetectClusterEnvironment(MapEnv({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"},
                                       {"TORCHELASTIC_USE_AGENT_STORE", "False"}}));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->external_store);
}

TEST(ClusterEnvironment, DescribeRanksNamesNodes) {
  ClusterEnvironment c;
  c.world_size = 6;
  c.local_world_size = 2;
  c.num_nodes = 3;
  EXPECT_EQ(DescribeRanks(c, {2, 3}), "2, 3 (node 1)");
  EXPECT_EQ(DescribeRanks(c, {1, 4}), "1, 4 (nodes 0, 2)");
  c.num_nodes = 1;
  EXPECT_EQ(DescribeRanks(c, {1}), "1");
}

}  // namespace
}  // namespace fabric::strategies
