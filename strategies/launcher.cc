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
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
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

// An integer environment variable; nullopt when unset.
absl::StatusOr<std::optional<int>> EnvInt(const EnvLookup& env, absl::string_view name) {
  std::optional<std::string> raw = env(name);
  if (!raw.has_value()) return std::optional<int>();
  int value = 0;
  if (!absl::SimpleAtoi(*raw, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", name, "='", *raw, "' is not an integer"));
  }
  return std::optional<int>(value);
}

// A setting given as an option and/or an environment variable: the option
// wins where the variable is unset, and the two must agree where both are.
template <typename T>
absl::StatusOr<std::optional<T>> Reconcile(const std::string& option, std::optional<T> given,
                                           absl::string_view variable, std::optional<T> from_env) {
  if (given.has_value() && from_env.has_value() && *given != *from_env) {
    return absl::InvalidArgumentError(absl::StrCat(
        option, "=", *given, " but environment variable ", variable, "=", *from_env,
        ": they disagree (set one of them, or the same value in both)"));
  }
  return given.has_value() ? given : from_env;
}

// A joined process: the options it was given must describe its launcher's job.
absl::Status CheckJoined(const LaunchOptions& o, const ClusterEnvironment& c) {
  const bool slurm = c.kind == ClusterKind::kSlurm;
  auto differ = [&](absl::string_view name, const auto& given, const auto& actual,
                    absl::string_view from) {
    return absl::InvalidArgumentError(absl::StrCat(
        o.option_prefix, name, "=", given, " but the ", ClusterKindName(c.kind), " environment has ",
        actual, " (", from, "): they disagree (leave ", o.option_prefix, name,
        " unset to take it from the environment)"));
  };
  if (o.devices > 0 && o.devices != c.local_world_size) {
    return differ("devices", o.devices, c.local_world_size,
                  slurm ? "processes per node: SLURM_NTASKS / SLURM_NNODES" : "LOCAL_WORLD_SIZE");
  }
  if (o.num_nodes > 0 && o.num_nodes != c.num_nodes) {
    return differ("num_nodes", o.num_nodes, c.num_nodes,
                  slurm ? "SLURM_NNODES" : "nodes: WORLD_SIZE / LOCAL_WORLD_SIZE");
  }
  if (o.node_rank >= 0 && o.node_rank != c.node_rank) {
    return differ("node_rank", o.node_rank, c.node_rank, slurm ? "SLURM_NODEID" : "GROUP_RANK");
  }
  if (!o.main_address.empty() && o.main_address != c.master_addr) {
    return differ("main_address", o.main_address, c.master_addr,
                  slurm ? "MASTER_ADDR or the first host of SLURM_JOB_NODELIST" : "MASTER_ADDR");
  }
  if (o.main_port > 0 && o.main_port != c.master_port) {
    return differ("main_port", o.main_port, c.master_port,
                  slurm ? "MASTER_PORT or 15000 + the last 4 digits of SLURM_JOB_ID" : "MASTER_PORT");
  }
  return absl::OkStatus();
}

// siginfo of an ended child as a wait status (for DescribeWaitStatus).
int WaitStatusOf(const siginfo_t& info) {
  if (info.si_code == CLD_EXITED) return (info.si_status & 0xff) << 8;
  return info.si_status & 0x7f;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Launcher>> Launcher::Launch(const LaunchOptions& options,
                                                           const EnvLookup& env) {
  const std::string& p = options.option_prefix;
  if (options.devices < 0) {
    return absl::InvalidArgumentError(absl::StrCat(p, "devices=", options.devices, " must be >= 0"));
  }
  if (options.num_nodes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(p, "num_nodes=", options.num_nodes, " must be >= 0"));
  }
  if (options.node_rank < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat(p, "node_rank=", options.node_rank, " must be >= 0 (or -1: from NODE_RANK)"));
  }
  if (options.main_port < 0 || options.main_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(p, "main_port=", options.main_port, " is not a TCP port (1..65535)"));
  }
  std::unique_ptr<Launcher> launcher(new Launcher());
  FABRIC_ASSIGN_OR_RETURN(launcher->cluster_, DetectClusterEnvironment(env));
  ClusterEnvironment& c = launcher->cluster_;

  if (!c.needs_launch()) {
    // Started by us, torchrun or srun: join, but check that the job is the
    // one the program asks for.
    FABRIC_RETURN_IF_ERROR(CheckJoined(options, c));
    return launcher;
  }

  const int devices = options.devices == 0 ? 1 : options.devices;
  const int num_nodes = options.num_nodes == 0 ? 1 : options.num_nodes;
  c.kind = ClusterKind::kTorchrun;
  c.local_world_size = devices;
  c.num_nodes = num_nodes;
  c.world_size = devices * num_nodes;
  c.local_rank = 0;

  // Node rank: the option, else NODE_RANK (Lightning's), else GROUP_RANK.
  absl::string_view node_var = "NODE_RANK";
  std::optional<int> env_node;
  FABRIC_ASSIGN_OR_RETURN(env_node, EnvInt(env, node_var));
  if (!env_node.has_value()) {
    node_var = "GROUP_RANK";
    FABRIC_ASSIGN_OR_RETURN(env_node, EnvInt(env, node_var));
  }
  std::optional<int> node_rank;
  FABRIC_ASSIGN_OR_RETURN(
      node_rank, Reconcile(absl::StrCat(p, "node_rank"),
                           options.node_rank >= 0 ? std::optional<int>(options.node_rank)
                                                  : std::nullopt,
                           node_var, env_node));
  const std::string multi = absl::StrCat(" is not set: with ", p, "num_nodes=", num_nodes,
                                         " every node's launch needs ");
  if (!node_rank.has_value() && num_nodes > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        p, "node_rank (or environment variable NODE_RANK)", multi,
        "its node rank (0..", num_nodes - 1, "), and node 0's address and port"));
  }
  c.node_rank = node_rank.value_or(0);
  if (c.node_rank < 0 || c.node_rank >= num_nodes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "node rank ", c.node_rank, " (", options.node_rank >= 0 ? p + "node_rank" : std::string(node_var),
        ") is out of range for ", p, "num_nodes=", num_nodes, " (0..", num_nodes - 1, ")"));
  }
  c.rank = c.node_rank * devices;

  std::optional<std::string> address;
  FABRIC_ASSIGN_OR_RETURN(
      address, Reconcile(absl::StrCat(p, "main_address"),
                         options.main_address.empty() ? std::nullopt
                                                      : std::optional<std::string>(options.main_address),
                         "MASTER_ADDR", env("MASTER_ADDR")));
  if (address.has_value() && address->empty()) {
    return absl::InvalidArgumentError("environment variable MASTER_ADDR is empty");
  }
  if (!address.has_value() && num_nodes > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        p, "main_address (or environment variable MASTER_ADDR)", multi,
        "the address of node 0, which hosts the rendezvous"));
  }
  c.master_addr = address.value_or("127.0.0.1");

  std::optional<int> env_port;
  FABRIC_ASSIGN_OR_RETURN(env_port, EnvInt(env, "MASTER_PORT"));
  if (env_port.has_value() && (*env_port < 1 || *env_port > 65535)) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable MASTER_PORT=", *env_port, " is not a TCP port"));
  }
  std::optional<int> port;
  FABRIC_ASSIGN_OR_RETURN(
      port, Reconcile(absl::StrCat(p, "main_port"),
                      options.main_port > 0 ? std::optional<int>(options.main_port) : std::nullopt,
                      "MASTER_PORT", env_port));
  if (!port.has_value() && num_nodes > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        p, "main_port (or environment variable MASTER_PORT)", multi,
        "the same rendezvous port"));
  }
  if (port.has_value()) {
    c.master_port = *port;
  } else {
    FABRIC_ASSIGN_OR_RETURN(c.master_port, FindFreePort(c.master_addr));
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
  return DescribeRank(child, child.wait_status);
}

std::string Launcher::DescribeRank(const Child& child, int wait_status) const {
  const std::string node =
      cluster_.num_nodes > 1 ? absl::StrCat("node ", cluster_.node_rank, ", ") : std::string();
  return absl::StrCat("rank ", child.rank, " (", node, "local rank ", child.local_rank, ", pid ",
                      child.pid, ") ", DescribeWaitStatus(wait_status));
}

void Launcher::WatchChildren(std::function<void(const std::string& failure)> on_failure) {
  StopWatching();
  stop_watching_ = false;
  std::vector<Child> watched = children_;
  watcher_ = std::thread([this, watched, on_failure = std::move(on_failure)]() {
    std::vector<bool> done(watched.size(), false);
    size_t left = watched.size();
    while (left > 0 && !stop_watching_.load()) {
      for (size_t i = 0; i < watched.size(); ++i) {
        if (done[i]) continue;
        // WNOWAIT: look without reaping (Finish and CheckChildren reap).
        siginfo_t info{};
        const int r = waitid(P_PID, static_cast<id_t>(watched[i].pid), &info,
                             WEXITED | WNOHANG | WNOWAIT);
        if (r < 0 && errno != EINTR) {  // Reaped already (ECHILD).
          done[i] = true;
          --left;
        } else if (r == 0 && info.si_pid == watched[i].pid) {
          done[i] = true;
          --left;
          const int status = WaitStatusOf(info);
          if (status != 0) on_failure(DescribeRank(watched[i], status));
        }
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
}

void Launcher::StopWatching() {
  stop_watching_ = true;
  if (watcher_.joinable()) watcher_.join();
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

Launcher::~Launcher() {
  StopWatching();
  Terminate();
}

}  // namespace fabric::strategies
