#include "tests/multinode/node_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

extern char** environ;

namespace fabric::testing {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs a short command (namespace setup); its exit status and output.
std::pair<int, std::string> Shell(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, "popen failed"};
  char buf[1024];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  return {pclose(p), out};
}

}  // namespace

absl::StatusOr<NodeProcess> NodeProcess::Start(const std::vector<std::string>& argv,
                                               const std::map<std::string, std::string>& env,
                                               const std::string& log) {
  std::vector<std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    if (env.count(entry.substr(0, entry.find('='))) == 0) vars.push_back(entry);
  }
  for (const auto& [k, v] : env) vars.push_back(absl::StrCat(k, "=", v));
  std::vector<char*> args, envp;
  std::vector<std::string> argv_copy = argv;
  for (std::string& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);
  for (std::string& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open ", log, ": ", strerror(errno)));
  const pid_t pid = fork();
  if (pid < 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    setpgid(0, 0);  // Its own group: the test can stop or kill a whole node.
    dup2(fd, 1);
    dup2(fd, 2);
    execvpe(args[0], args.data(), envp.data());
    _exit(127);
  }
  close(fd);
  setpgid(pid, pid);
  NodeProcess p;
  p.pid_ = pid;
  p.log_ = log;
  return p;
}

std::string NodeProcess::Log() const { return ReadAll(log_); }

std::optional<int> NodeProcess::Wait(absl::Duration timeout) {
  if (reaped_) return status_;
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      status_ = status;
      return status;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

std::vector<pid_t> NodeProcess::Group() const {
  std::vector<pid_t> pids;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    const std::string stat = ReadAll(absl::StrCat("/proc/", pid, "/stat"));
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    // Fields after the name: state ppid pgrp ...
    std::vector<std::string> fields = absl::StrSplit(stat.substr(paren + 2), ' ');
    int pgrp = 0;
    if (fields.size() > 2 && absl::SimpleAtoi(fields[2], &pgrp) && pgrp == pid_ && fields[0] != "Z") {
      pids.push_back(pid);
    }
  }
  return pids;
}

void NodeProcess::SignalGroup(int sig) const { kill(-pid_, sig); }

void NodeProcess::KillAll() {
  if (pid_ <= 0) return;
  kill(-pid_, SIGKILL);
  if (!reaped_) {
    waitpid(pid_, &status_, 0);
    reaped_ = true;
  }
}

bool Gone(pid_t pid) {
  const std::string stat = ReadAll(absl::StrCat("/proc/", pid, "/stat"));
  if (stat.empty()) return true;
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && stat.size() > paren + 2 && stat[paren + 2] == 'Z';
}

std::string DescribeStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return absl::StrCat("wait status ", status);
}

absl::StatusOr<std::unique_ptr<NamespacePair>> NamespacePair::Create() {
  if (geteuid() != 0) return absl::UnavailableError("not root");
  std::unique_ptr<NamespacePair> pair(new NamespacePair());
  const std::string tag = absl::StrCat("fmn", getpid() % 100000);
  pair->names_[0] = tag + "a";
  pair->names_[1] = tag + "b";
  const std::string a = pair->names_[0], b = pair->names_[1];
  const std::string va = tag + "x", vb = tag + "y";  // veth names: <= 15 characters
  const std::vector<std::string> steps = {
      absl::StrCat("ip netns add ", a),
      absl::StrCat("ip netns add ", b),
      absl::StrCat("ip link add ", va, " type veth peer name ", vb),
      absl::StrCat("ip link set ", va, " netns ", a),
      absl::StrCat("ip link set ", vb, " netns ", b),
      absl::StrCat("ip -n ", a, " addr add 10.250.0.1/24 dev ", va),
      absl::StrCat("ip -n ", b, " addr add 10.250.0.2/24 dev ", vb),
      absl::StrCat("ip -n ", a, " link set ", va, " up"),
      absl::StrCat("ip -n ", b, " link set ", vb, " up"),
      absl::StrCat("ip -n ", a, " link set lo up"),
      absl::StrCat("ip -n ", b, " link set lo up"),
  };
  for (const std::string& step : steps) {
    auto [rc, out] = Shell(step);
    if (rc != 0) return absl::UnavailableError(absl::StrCat("`", step, "` failed: ", out));
  }
  return pair;
}

NamespacePair::~NamespacePair() {
  for (const std::string& ns : names_) {
    if (!ns.empty()) Shell(absl::StrCat("ip netns del ", ns));  // takes its veth end along
  }
}

}  // namespace fabric::testing
