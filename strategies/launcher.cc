#include "strategies/launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "strategies/free_port.h"
#include "base/status_macros.h"

extern char** environ;

namespace fabric::strategies {
namespace {

// Children of every live Launcher, for the signal and exit handlers, which
// may only touch lock-free state.
constexpr int kMaxTracked = 1024;
std::atomic<pid_t> g_tracked[kMaxTracked];

void Track(pid_t pid) {
  for (auto& slot : g_tracked) {
    pid_t empty = 0;
    if (slot.compare_exchange_strong(empty, pid)) return;
  }
}

void Untrack(pid_t pid) {
  for (auto& slot : g_tracked) {
    pid_t expected = pid;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

void KillTracked(int sig) {
  for (auto& slot : g_tracked) {
    pid_t pid = slot.load();
    if (pid > 0) kill(pid, sig);
  }
}

constexpr int kForwardedSignals[] = {SIGINT, SIGTERM, SIGHUP};
struct sigaction g_previous[std::size(kForwardedSignals)];

void OnSignal(int sig, siginfo_t* info, void* context) {
  int saved_errno = errno;
  KillTracked(SIGTERM);
  for (size_t i = 0; i < std::size(kForwardedSignals); ++i) {
    if (kForwardedSignals[i] != sig) continue;
    const struct sigaction& old = g_previous[i];
    if (old.sa_flags & SA_SIGINFO) {
      old.sa_sigaction(sig, info, context);
    } else if (old.sa_handler == SIG_DFL) {
      // Die of the same signal, as if we had not been here.
      signal(sig, SIG_DFL);
      raise(sig);
    } else if (old.sa_handler != SIG_IGN) {
      old.sa_handler(sig);
    }
  }
  errno = saved_errno;
}

void OnExit() { KillTracked(SIGTERM); }

void InstallHandlersOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (size_t i = 0; i < std::size(kForwardedSignals); ++i) {
      struct sigaction action {};
      action.sa_sigaction = &OnSignal;
      action.sa_flags = SA_SIGINFO | SA_RESTART;
      sigemptyset(&action.sa_mask);
      sigaction(kForwardedSignals[i], &action, &g_previous[i]);
    }
    std::atexit(&OnExit);
  });
}

absl::StatusOr<std::vector<std::string>> OwnArgv() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  if (!in) return absl::InternalError("cannot read /proc/self/cmdline to re-execute this program");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> argv;
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\0', start);
    if (end == std::string::npos) end = all.size();
    argv.push_back(all.substr(start, end - start));
    start = end + 1;
  }
  if (argv.empty()) return absl::InternalError("/proc/self/cmdline is empty");
  return argv;
}

absl::StatusOr<std::string> OwnExecutable() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) {
    return absl::InternalError(absl::StrCat("cannot read /proc/self/exe: ", std::strerror(errno)));
  }
  return std::string(buf, static_cast<size_t>(n));
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* name = sigdescr_np(sig);
    return absl::StrCat("was killed by signal ", sig, " (", name ? name : "unknown", ")");
  }
  return absl::StrCat("ended with wait status ", status);
}

absl::StatusOr<int> ReadNodeRank(const EnvLookup& env) {
  for (const char* name : {"NODE_RANK", "GROUP_RANK"}) {
    std::optional<std::string> raw = env(name);
    if (!raw.has_value()) continue;
    int value = 0;
    if (!absl::SimpleAtoi(*raw, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("environment variable ", name, "='", *raw, "' is not an integer"));
    }
    return value;
  }
  return absl::InvalidArgumentError(
      "environment variable NODE_RANK is not set: with num_nodes > 1 every node's launcher "
      "needs NODE_RANK (0..num_nodes-1), MASTER_ADDR and MASTER_PORT");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Launcher>> Launcher::Launch(const LaunchOptions& options,
                                                           const EnvLookup& env) {
  if (options.devices < 0) {
    return absl::InvalidArgumentError(absl::StrCat("LaunchOptions.devices=", options.devices, " must be >= 0"));
  }
  if (options.num_nodes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("LaunchOptions.num_nodes=", options.num_nodes, " must be >= 1"));
  }
  std::unique_ptr<Launcher> launcher(new Launcher());
  FABRIC_ASSIGN_OR_RETURN(launcher->cluster_, DetectClusterEnvironment(env));
  ClusterEnvironment& c = launcher->cluster_;

  if (!c.needs_launch()) {
    // Started by us, torchrun or srun: join, but check that the job is the
    // one the program asks for.
    if (options.devices > 0 && options.devices != c.local_world_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LaunchOptions.devices=", options.devices, " but the ", ClusterKindName(c.kind),
          " environment has ", c.local_world_size, " processes per node (",
          c.kind == ClusterKind::kSlurm ? "SLURM_NTASKS / SLURM_NNODES" : "LOCAL_WORLD_SIZE", ")"));
    }
    if (options.num_nodes != c.num_nodes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LaunchOptions.num_nodes=", options.num_nodes, " but the ", ClusterKindName(c.kind),
          " environment has ", c.num_nodes, " nodes (",
          c.kind == ClusterKind::kSlurm ? "SLURM_NNODES" : "WORLD_SIZE / LOCAL_WORLD_SIZE", ")"));
    }
    return launcher;
  }

  int devices = options.devices == 0 ? 1 : options.devices;
  c.kind = ClusterKind::kTorchrun;
  c.local_world_size = devices;
  c.num_nodes = options.num_nodes;
  c.world_size = devices * options.num_nodes;
  c.local_rank = 0;
  c.node_rank = 0;
  if (options.num_nodes > 1) {
    FABRIC_ASSIGN_OR_RETURN(c.node_rank, ReadNodeRank(env));
    if (c.node_rank < 0 || c.node_rank >= options.num_nodes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "environment variable NODE_RANK=", c.node_rank, " is out of range for num_nodes=",
          options.num_nodes));
    }
  }
  c.rank = c.node_rank * devices;

  c.master_addr = options.master_addr;
  if (c.master_addr.empty()) c.master_addr = env("MASTER_ADDR").value_or("");
  if (c.master_addr.empty()) {
    if (options.num_nodes > 1) {
      return absl::InvalidArgumentError(
          "environment variable MASTER_ADDR is not set: with num_nodes > 1 every node must "
          "know the address of node 0");
    }
    c.master_addr = "127.0.0.1";
  }
  c.master_port = options.master_port;
  if (c.master_port == 0) {
    if (std::optional<std::string> raw = env("MASTER_PORT"); raw.has_value()) {
      if (!absl::SimpleAtoi(*raw, &c.master_port) || c.master_port < 1 || c.master_port > 65535) {
        return absl::InvalidArgumentError(
            absl::StrCat("environment variable MASTER_PORT='", *raw, "' is not a TCP port"));
      }
    } else if (options.num_nodes > 1) {
      return absl::InvalidArgumentError(
          "environment variable MASTER_PORT is not set: with num_nodes > 1 every node must "
          "use the same rendezvous port");
    } else {
      FABRIC_ASSIGN_OR_RETURN(c.master_port, FindFreePort(c.master_addr));
    }
  }
  if (c.master_port < 1 || c.master_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("LaunchOptions.master_port=", c.master_port, " is not a TCP port"));
  }
  if (devices > 1) FABRIC_RETURN_IF_ERROR(launcher->Spawn(options));
  return launcher;
}

absl::Status Launcher::Spawn(const LaunchOptions& options) {
  std::string executable = options.executable;
  if (executable.empty()) {
    FABRIC_ASSIGN_OR_RETURN(executable, OwnExecutable());
  }
  std::vector<std::string> argv = options.argv;
  if (argv.empty()) {
    FABRIC_ASSIGN_OR_RETURN(argv, OwnArgv());
  }

  const ClusterEnvironment& c = cluster_;
  absl::flat_hash_set<std::string> overridden = {
      "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
      "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"};
  for (const auto& [key, value] : options.extra_env) overridden.insert(key);
  std::vector<std::string> base_env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    if (!overridden.contains(entry.substr(0, entry.find('=')))) base_env.push_back(entry);
  }
  for (const auto& [key, value] : options.extra_env) base_env.push_back(absl::StrCat(key, "=", value));
  base_env.push_back(absl::StrCat("WORLD_SIZE=", c.world_size));
  base_env.push_back(absl::StrCat("LOCAL_WORLD_SIZE=", c.local_world_size));
  base_env.push_back(absl::StrCat("GROUP_RANK=", c.node_rank));
  base_env.push_back(absl::StrCat("NODE_RANK=", c.node_rank));
  base_env.push_back(absl::StrCat("MASTER_ADDR=", c.master_addr));
  base_env.push_back(absl::StrCat("MASTER_PORT=", c.master_port));

  InstallHandlersOnce();
  std::vector<char*> argv_ptrs;
  for (std::string& a : argv) argv_ptrs.push_back(a.data());
  argv_ptrs.push_back(nullptr);
  const pid_t parent = getpid();

  for (int local_rank = 1; local_rank < c.local_world_size; ++local_rank) {
    const int rank = c.node_rank * c.local_world_size + local_rank;
    std::vector<std::string> env = base_env;
    env.push_back(absl::StrCat("RANK=", rank));
    env.push_back(absl::StrCat("LOCAL_RANK=", local_rank));
    std::vector<char*> env_ptrs;
    for (std::string& e : env) env_ptrs.push_back(e.data());
    env_ptrs.push_back(nullptr);

    // The child reports a failed exec through this pipe; a successful exec
    // closes it (O_CLOEXEC), which the parent reads as EOF.
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
      Terminate();
      return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
    }
    pid_t pid = fork();
    if (pid < 0) {
      int err = errno;
      close(pipe_fds[0]);
      close(pipe_fds[1]);
      Terminate();
      return absl::ResourceExhaustedError(
          absl::StrCat("fork for local rank ", local_rank, " failed: ", std::strerror(err)));
    }
    if (pid == 0) {
      // Child: only async-signal-safe calls from here to execve.
      close(pipe_fds[0]);
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      // The parent may have died between fork and prctl.
      if (getppid() != parent) _exit(128 + SIGTERM);
      sigset_t all;
      sigemptyset(&all);
      sigprocmask(SIG_SETMASK, &all, nullptr);
      execve(executable.c_str(), argv_ptrs.data(), env_ptrs.data());
      int err = errno;
      ssize_t ignored = write(pipe_fds[1], &err, sizeof(err));
      (void)ignored;
      _exit(127);
    }
    close(pipe_fds[1]);
    Track(pid);
    children_.push_back(Child{rank, local_rank, pid});
    int exec_errno = 0;
    ssize_t n;
    do {
      n = read(pipe_fds[0], &exec_errno, sizeof(exec_errno));
    } while (n < 0 && errno == EINTR);
    close(pipe_fds[0]);
    if (n == sizeof(exec_errno)) {
      Terminate();
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot start local rank ", local_rank, ": execve(", executable,
          ") failed: ", std::strerror(exec_errno)));
    }
  }
  return absl::OkStatus();
}

std::vector<pid_t> Launcher::child_pids() const {
  std::vector<pid_t> pids;
  for (const Child& child : children_) pids.push_back(child.pid);
  return pids;
}

std::string Launcher::Describe(const Child& child) const {
  return absl::StrCat("rank ", child.rank, " (local rank ", child.local_rank, ", pid ",
                      child.pid, ") ", DescribeWaitStatus(child.wait_status));
}

int Launcher::Poll() {
  int running = 0;
  for (Child& child : children_) {
    if (child.reaped) continue;
    int status = 0;
    pid_t r = waitpid(child.pid, &status, WNOHANG);
    if (r == child.pid || (r < 0 && errno == ECHILD)) {
      child.reaped = true;
      child.wait_status = r == child.pid ? status : 0;
      Untrack(child.pid);
    } else {
      ++running;
    }
  }
  return running;
}

absl::Status Launcher::CheckChildren() {
  Poll();
  std::vector<std::string> failed;
  for (const Child& child : children_) {
    if (child.reaped && child.wait_status != 0) failed.push_back(Describe(child));
  }
  if (failed.empty()) return absl::OkStatus();
  return absl::AbortedError(absl::StrJoin(failed, "; "));
}

absl::Status Launcher::Finish(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration nap = absl::Milliseconds(1);
  while (Poll() > 0) {
    absl::Status failed = CheckChildren();
    if (!failed.ok()) {
      // The others are likely stuck in a collective with the dead rank.
      Terminate();
      return failed;
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "local ranks still running after waiting ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(nap);
    nap = std::min(nap * 2, absl::Milliseconds(50));
  }
  return CheckChildren();
}

void Launcher::Terminate(absl::Duration grace) {
  if (Poll() == 0) return;
  for (const Child& child : children_) {
    if (!child.reaped) kill(child.pid, SIGTERM);
  }
  const absl::Time deadline = absl::Now() + grace;
  while (Poll() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  for (Child& child : children_) {
    if (child.reaped) continue;
    kill(child.pid, SIGKILL);
    int status = 0;
    while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
    }
    child.reaped = true;
    child.wait_status = status;
    Untrack(child.pid);
  }
}

Launcher::~Launcher() { Terminate(); }

}  // namespace fabric::strategies
