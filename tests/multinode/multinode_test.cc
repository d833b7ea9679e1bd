// Several nodes on one machine, as real as it gets: every node is a separate
// launcher invocation (our trainer's own launcher, torchrun, or one
// srun-style task per rank), with real Gloo between the processes, first
// over loopback, then between two network namespaces joined by a veth pair.
//
// FSDP on 2 nodes x 2 ranks trains, saves to the shared folder, has a node
// killed, resumes exactly (the losses of an uninterrupted run, step for
// step) and its checkpoint loads on 1 process; a node that never arrives and
// a rank that dies are reported, with their ranks, in bounded time, leaving
// no process behind; ranks that see different checkpoint folders are
// refused before anything is written.
//
// Args: FSDP_TRAIN LOAD PYTHON VALID_TXT
#include <signal.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "strategies/free_port.h"
#include "tests/multinode/node_process.h"
#include "trainers/checkpoints.h"

namespace fabric::testing {
namespace {
namespace fs = std::filesystem;

std::string g_train, g_load, g_python, g_data;
constexpr int kSteps = 6;
constexpr int kInterval = 2;

std::string Dir(const std::string& name) {
  const fs::path d = fs::path(std::getenv("TEST_TMPDIR")) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// Where the nodes run: loopback, or one network namespace each.
struct Topology {
  std::string name;
  std::string address[2];
  std::vector<std::string> prefix[2];  // argv prefix per node (ip netns exec ...)
};

Topology Loopback() { return {"loopback", {"127.0.0.1", "127.0.0.1"}, {{}, {}}}; }

Topology Namespaces(const NamespacePair& pair) {
  return {"netns", {pair.address(0), pair.address(1)}, {pair.Exec(0), pair.Exec(1)}};
}

// The trainer's flags shared by every node of a run.
std::vector<std::string> TrainFlags(const std::string& checkpoints, int steps) {
  return {"--data_dir=" + g_data,    "--split=valid",  "--preset=tiny",       "--lr=3e-3",
          "--batch_size=8",          "--log_every=1",  absl::StrCat("--steps=", steps),
          absl::StrCat("--checkpoint_interval=", kInterval),
          "--checkpoint_dir=" + checkpoints};
}

// Our launcher on node `node` of a 2 x 2 job.
NodeProcess StartNode(const Topology& t, int node, int port, const std::string& run,
                      std::vector<std::string> extra, int devices = 2) {
  std::vector<std::string> argv = t.prefix[node];
  argv.push_back(g_train);
  for (std::string f : {absl::StrCat("--devices=", devices), std::string("--num_nodes=2"),
                        absl::StrCat("--node_rank=", node), "--main_address=" + t.address[0],
                        absl::StrCat("--main_port=", port),
                        // Node-local output; only the checkpoints are shared.
                        absl::StrCat("--out_dir=", run, "/node", node)}) {
    argv.push_back(f);
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  absl::StatusOr<NodeProcess> p =
      NodeProcess::Start(argv, {}, absl::StrCat(run, "/node", node, ".log"));
  EXPECT_TRUE(p.ok()) << p.status();
  return *std::move(p);
}

int Port() {
  absl::StatusOr<int> port = strategies::FindFreePort("127.0.0.1");
  EXPECT_TRUE(port.ok()) << port.status();
  return port.value_or(29555);
}

// Waits for every node; returns their wait statuses (-1: had to be killed).
std::vector<int> WaitAll(std::vector<NodeProcess>& nodes, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<int> statuses;
  for (NodeProcess& n : nodes) {
    std::optional<int> s = n.Wait(std::max(absl::ZeroDuration(), deadline - absl::Now()));
    if (!s.has_value()) {
      ADD_FAILURE() << n.log_path() << " still runs after " << timeout << ":\n" << n.Log();
      n.KillAll();
      statuses.push_back(-1);
    } else {
      statuses.push_back(*s);
    }
  }
  return statuses;
}

void ExpectAllOk(std::vector<NodeProcess>& nodes, absl::Duration timeout) {
  std::vector<int> statuses = WaitAll(nodes, timeout);
  for (size_t i = 0; i < nodes.size(); ++i) {
    EXPECT_EQ(statuses[i], 0) << nodes[i].log_path() << " " << DescribeStatus(statuses[i]) << ":\n"
                              << nodes[i].Log();
  }
}

// metrics.csv: step -> loss as written (compared as text: bit-exact).
std::map<int64_t, std::string> Losses(const std::string& out_dir) {
  std::map<int64_t, std::string> m;
  std::ifstream in(fs::path(out_dir) / "metrics.csv");
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ',');
    int64_t step = 0;
    if (f.size() >= 3 && absl::SimpleAtoi(f[0], &step)) m[step] = f[2];
  }
  return m;
}

std::map<int64_t, std::string> FirstSteps(const std::map<int64_t, std::string>& m, int64_t n) {
  std::map<int64_t, std::string> out;
  for (const auto& [step, loss] : m) {
    if (step <= n) out[step] = loss;
  }
  return out;
}

// "eval_loss X" of //trainers:load on one process.
double EvalOnOne(const std::string& checkpoints, std::string* out_text = nullptr) {
  const std::string cmd = absl::StrCat(g_load, " --checkpoint=", checkpoints, " --data_dir=", g_data,
                                       " --eval_batches=5 2>&1");
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while (p && (n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = p ? pclose(p) : -1;
  EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  if (out_text) *out_text = out;
  const size_t at = out.find("eval_loss ");
  double v = NAN;
  if (at != std::string::npos) {
    (void)absl::SimpleAtod(out.substr(at + 10, out.find_first_of(" \n", at + 10) - at - 10), &v);
  }
  return v;
}

// The uninterrupted 2 x 2 reference run (computed once per topology).
struct Reference {
  std::map<int64_t, std::string> losses;
  std::string checkpoints;
};

Reference RunReference(const Topology& t) {
  const std::string run = Dir(t.name + "_reference");
  const std::string ckpt = run + "/checkpoints";
  const int port = Port();
  std::vector<NodeProcess> nodes;
  for (int node = 0; node < 2; ++node) {
    nodes.push_back(StartNode(t, node, port, run, TrainFlags(ckpt, kSteps)));
  }
  ExpectAllOk(nodes, absl::Seconds(240));
  Reference r{Losses(run + "/node0"), ckpt};
  EXPECT_EQ(r.losses.size(), static_cast<size_t>(kSteps)) << nodes[0].Log();
  EXPECT_TRUE(Losses(run + "/node1").empty()) << "only global rank 0 writes metrics";
  return r;
}

// Trains 2 x 2, kills node 1 (its launcher and both of its ranks) right after
// the first checkpoint, expects node 0 to end by itself naming the lost
// ranks, resumes both nodes, and expects the reference's losses and weights.
void KillNodeAndResume(const Topology& t, const Reference& ref) {
  const std::string run = Dir(t.name + "_killed");
  const std::string ckpt = run + "/checkpoints";
  const int port = Port();
  std::vector<NodeProcess> nodes;
  for (int node = 0; node < 2; ++node) {
    nodes.push_back(StartNode(t, node, port, run, TrainFlags(ckpt, kSteps)));
  }
  const fs::path first = fs::path(ckpt) / trainers::CheckpointName(kInterval) / ".metadata";
  const absl::Time deadline = absl::Now() + absl::Seconds(180);
  while (!fs::exists(first) && absl::Now() < deadline && !nodes[0].Wait(absl::ZeroDuration())) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_TRUE(fs::exists(first)) << nodes[0].Log() << nodes[1].Log();
  // Freeze both nodes where they are, then kill node 1 as a machine dies.
  nodes[0].SignalGroup(SIGSTOP);
  nodes[1].SignalGroup(SIGSTOP);
  const std::vector<pid_t> node0 = nodes[0].Group(), node1 = nodes[1].Group();
  EXPECT_EQ(node0.size(), 2u);
  EXPECT_EQ(node1.size(), 2u);
  nodes[1].KillAll();
  const absl::Time killed = absl::Now();
  nodes[0].SignalGroup(SIGCONT);
  std::optional<int> status = nodes[0].Wait(absl::Seconds(30));
  ASSERT_TRUE(status.has_value()) << "node 0 outlived node 1:\n" << nodes[0].Log();
  const absl::Duration reported = absl::Now() - killed;
  const std::string log0 = nodes[0].Log();
  EXPECT_NE(*status, 0) << log0;
  EXPECT_TRUE(log0.find("rank(s) 2, 3 (node 1) stopped") != std::string::npos ||
              log0.find("rank 2") != std::string::npos || log0.find("rank 3") != std::string::npos)
      << "node 0 " << DescribeStatus(*status) << ":\n" << log0;
  for (pid_t pid : node0) EXPECT_TRUE(Gone(pid)) << "orphan " << pid;
  for (pid_t pid : node1) EXPECT_TRUE(Gone(pid)) << "orphan " << pid;
  std::printf("[%s] node 1 killed: node 0 ended %.2f s later\n", t.name.c_str(),
              absl::ToDoubleSeconds(reported));

  nodes.clear();
  for (int node = 0; node < 2; ++node) {
    std::vector<std::string> flags = TrainFlags(ckpt, kSteps);
    flags.push_back("--resume");
    nodes.push_back(StartNode(t, node, port + 0, run, flags));
  }
  ExpectAllOk(nodes, absl::Seconds(240));
  const std::string resumed_log = nodes[0].Log();
  EXPECT_NE(resumed_log.find("resumed from"), std::string::npos) << resumed_log;
  EXPECT_EQ(Losses(run + "/node0"), ref.losses) << resumed_log;

  // The resumed checkpoint holds the reference's weights: one process
  // evaluates both to the same loss.
  std::string text;
  const double a = EvalOnOne(ckpt, &text), b = EvalOnOne(ref.checkpoints);
  EXPECT_NE(text.find("sharded, saved on 4 rank(s)"), std::string::npos) << text;
  EXPECT_TRUE(std::isfinite(a)) << text;
  EXPECT_EQ(a, b);
}

class MultiNode : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { reference_ = new Reference(RunReference(Loopback())); }
  static void TearDownTestSuite() {
    delete reference_;
    reference_ = nullptr;
  }
  static Reference* reference_;
};
Reference* MultiNode::reference_ = nullptr;

TEST_F(MultiNode, LoopbackFsdpTwoByTwoKillNodeResumeExactlyLoadOnOne) {
  KillNodeAndResume(Loopback(), *reference_);
}

TEST_F(MultiNode, LoopbackDeadRankEndsEveryNodeNamingIt) {
  const Topology t = Loopback();
  const std::string run = Dir("dead_rank");
  const int port = Port();
  std::vector<NodeProcess> nodes;
  for (int node = 0; node < 2; ++node) {
    nodes.push_back(StartNode(t, node, port, run, TrainFlags(run + "/checkpoints", 100000)));
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (nodes[0].Log().find("step 3/") == std::string::npos && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  std::vector<pid_t> all = nodes[0].Group();
  const std::vector<pid_t> node1 = nodes[1].Group();
  all.insert(all.end(), node1.begin(), node1.end());
  ASSERT_EQ(all.size(), 4u) << nodes[0].Log() << nodes[1].Log();
  // Rank 3: node 1's second process (not its launcher).
  pid_t victim = -1;
  for (pid_t pid : node1) {
    if (pid != nodes[1].pid()) victim = pid;
  }
  ASSERT_GT(victim, 0);
  kill(victim, SIGKILL);
  const absl::Time killed = absl::Now();
  std::vector<int> statuses = WaitAll(nodes, absl::Seconds(30));
  const absl::Duration ended = absl::Now() - killed;
  EXPECT_LT(ended, absl::Seconds(15));
  const std::string named = absl::StrCat("rank 3 (node 1, local rank 1, pid ", victim,
                                         ") was killed by signal 9");
  for (int node = 0; node < 2; ++node) {
    EXPECT_NE(statuses[node], 0) << nodes[node].Log();
    EXPECT_NE(nodes[node].Log().find(named), std::string::npos)
        << "node " << node << " should say: " << named << "\n" << nodes[node].Log();
  }
  for (pid_t pid : all) EXPECT_TRUE(Gone(pid)) << "orphan " << pid;
  std::printf("[loopback] rank 3 killed: every node ended %.2f s later\n",
              absl::ToDoubleSeconds(ended));
}

TEST_F(MultiNode, LoopbackMissingNodeIsNamedAfterTheRendezvousTimeout) {
  const Topology t = Loopback();
  const std::string run = Dir("missing");
  const int port = Port();
  const std::vector<std::string> flags = {"--data_dir=" + g_data, "--split=valid",
                                          "--preset=tiny", "--steps=1", "--rendezvous_timeout=4"};
  for (int present = 0; present < 2; ++present) {
    const absl::Time start = absl::Now();
    std::vector<NodeProcess> nodes;
    nodes.push_back(StartNode(t, present, port, run, flags));
    std::vector<int> statuses = WaitAll(nodes, absl::Seconds(60));
    const absl::Duration took = absl::Now() - start;
    EXPECT_NE(statuses[0], 0);
    EXPECT_LT(took, absl::Seconds(30));
    const std::string log = nodes[0].Log();
    const std::string address = absl::StrCat("127.0.0.1:", port);
    EXPECT_NE(log.find(address), std::string::npos) << log;
    if (present == 0) {
      EXPECT_NE(log.find("rank(s) 2, 3 of world_size 4 never joined (node 1)"), std::string::npos)
          << log;
    } else {
      EXPECT_NE(log.find("rank 0 (node 0, ranks 0..1) has not started the rendezvous"),
                std::string::npos)
          << log;
    }
    for (pid_t pid : nodes[0].Group()) EXPECT_TRUE(Gone(pid)) << "orphan " << pid;
    std::printf("[loopback] node %d missing: reported after %.2f s (--rendezvous_timeout=4)\n",
                1 - present, absl::ToDoubleSeconds(took));
  }
}

TEST_F(MultiNode, LoopbackRanksThatSeeDifferentFoldersAreRefused) {
  const Topology t = Loopback();
  const std::string run = Dir("not_shared");
  const int port = Port();
  std::vector<NodeProcess> nodes;
  for (int node = 0; node < 2; ++node) {
    // As node-local paths: each node its own folder.
    nodes.push_back(StartNode(t, node, port, run,
                              TrainFlags(absl::StrCat(run, "/local", node), 2), /*devices=*/1));
  }
  std::vector<int> statuses = WaitAll(nodes, absl::Seconds(120));
  for (int node = 0; node < 2; ++node) {
    EXPECT_NE(statuses[node], 0);
    EXPECT_NE(nodes[node].Log().find("is not shared by all ranks: rank(s) 1 (node 1) do not see"),
              std::string::npos)
        << nodes[node].Log();
  }
  absl::StatusOr<std::vector<trainers::CheckpointEntry>> saved =
      trainers::ListCheckpoints(run + "/local0");
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_TRUE(saved->empty()) << "nothing may be saved";
}

TEST_F(MultiNode, TorchrunTwoNodesDerivesDevicesAndNodes) {
  const std::string run = Dir("torchrun");
  const int port = Port();
  std::vector<NodeProcess> nodes;
  for (int node = 0; node < 2; ++node) {
    std::vector<std::string> argv = {g_python, "-m", "torch.distributed.run", "--nnodes=2",
                                     absl::StrCat("--node_rank=", node), "--nproc-per-node=2",
                                     "--master_addr=127.0.0.1", absl::StrCat("--master_port=", port),
                                     "--no-python", g_train,
                                     absl::StrCat("--out_dir=", run, "/node", node)};
    // No --devices, no --num_nodes: from LOCAL_WORLD_SIZE and WORLD_SIZE.
    for (const std::string& f : TrainFlags(run + "/checkpoints", 4)) argv.push_back(f);
    absl::StatusOr<NodeProcess> p = NodeProcess::Start(
        argv, {{"OMP_NUM_THREADS", "1"}}, absl::StrCat(run, "/node", node, ".log"));
    ASSERT_TRUE(p.ok()) << p.status();
    nodes.push_back(*std::move(p));
  }
  ExpectAllOk(nodes, absl::Seconds(240));
  EXPECT_EQ(Losses(run + "/node0"), FirstSteps(reference_->losses, 4)) << nodes[0].Log();
}

TEST_F(MultiNode, SlurmOneTaskPerRank) {
  // srun --nodes=2 --ntasks-per-node=2: four tasks with SLURM's variables;
  // the main address is the first host of the node list, the port comes from
  // the job id (15000 + its last 4 digits), as in Lightning.
  int job = 0;
  std::mt19937 rng(static_cast<unsigned>(getpid()));
  for (int attempt = 0; attempt < 50 && job == 0; ++attempt) {
    const int candidate = static_cast<int>(rng() % 9000) + 1000;
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(15000 + candidate));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) job = candidate;
    close(fd);
  }
  ASSERT_NE(job, 0);
  const std::string run = Dir("slurm");
  std::vector<NodeProcess> tasks;
  for (int rank = 0; rank < 4; ++rank) {
    std::vector<std::string> argv = {g_train, absl::StrCat("--out_dir=", run, "/task", rank)};
    for (const std::string& f : TrainFlags(run + "/checkpoints", 4)) argv.push_back(f);
    absl::StatusOr<NodeProcess> p = NodeProcess::Start(
        argv,
        {{"SLURM_NTASKS", "4"},
         {"SLURM_PROCID", absl::StrCat(rank)},
         {"SLURM_LOCALID", absl::StrCat(rank % 2)},
         {"SLURM_NODEID", absl::StrCat(rank / 2)},
         {"SLURM_NNODES", "2"},
         {"SLURM_NTASKS_PER_NODE", "2"},
         {"SLURM_JOB_NODELIST", "127.0.0.[1-2]"},
         {"SLURM_JOB_ID", absl::StrCat(1230000 + job)},
         {"SLURM_JOB_NAME", "fsdp_train"}},
        absl::StrCat(run, "/task", rank, ".log"));
    ASSERT_TRUE(p.ok()) << p.status();
    tasks.push_back(*std::move(p));
  }
  ExpectAllOk(tasks, absl::Seconds(240));
  EXPECT_EQ(Losses(run + "/task0"), FirstSteps(reference_->losses, 4)) << tasks[0].Log();
}

// Two network namespaces, each with its own address on a veth pair: the
// rendezvous on node 0's address, Gloo over the veth.
TEST_F(MultiNode, NamespacesFsdpTwoByTwoTrainsAndLoadsOnOne) {
  absl::StatusOr<std::unique_ptr<NamespacePair>> pair = NamespacePair::Create();
  if (!pair.ok()) GTEST_SKIP() << "network namespaces are not available here: " << pair.status();
  const Topology t = Namespaces(**pair);
  const std::string run = Dir("netns_short");
  const int port = Port();
  std::vector<NodeProcess> nodes;
  for (int node = 0; node < 2; ++node) {
    nodes.push_back(StartNode(t, node, port, run, TrainFlags(run + "/checkpoints", 4)));
  }
  ExpectAllOk(nodes, absl::Seconds(240));
  EXPECT_EQ(Losses(run + "/node0"), FirstSteps(reference_->losses, 4)) << nodes[0].Log();
  std::string text;
  EXPECT_TRUE(std::isfinite(EvalOnOne(run + "/checkpoints", &text))) << text;
}

// The slow variant (manual target): the whole kill-and-resume over the veth.
TEST(MultiNodeSlow, NamespacesFsdpTwoByTwoKillNodeResumeExactlyLoadOnOne) {
  absl::StatusOr<std::unique_ptr<NamespacePair>> pair = NamespacePair::Create();
  if (!pair.ok()) GTEST_SKIP() << "network namespaces are not available here: " << pair.status();
  const Topology t = Namespaces(**pair);
  KillNodeAndResume(t, RunReference(t));
}

}  // namespace
}  // namespace fabric::testing

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s FSDP_TRAIN LOAD PYTHON VALID_TXT\n", argv[0]);
    return 2;
  }
  auto absolute = [](std::string p) {
    return p.empty() || p[0] == '/' ? p : (std::filesystem::current_path() / p).string();
  };
  fabric::testing::g_train = absolute(argv[1]);
  fabric::testing::g_load = absolute(argv[2]);
  fabric::testing::g_python = absolute(argv[3]);
  const std::string valid = absolute(argv[4]);
  fabric::testing::g_data = valid.substr(0, valid.rfind('/'));
  return RUN_ALL_TESTS();
}
