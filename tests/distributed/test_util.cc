#include "tests/distributed/test_util.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

extern char** environ;

namespace fabric::testing {

absl::Status ExpectEqual(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  if (!a.defined() || !b.defined()) return absl::InternalError(what + ": undefined tensor");
  if (a.sizes() != b.sizes()) {
    std::ostringstream msg;
    msg << what << ": shape " << a.sizes() << " != " << b.sizes();
    return absl::InternalError(msg.str());
  }
  if (!at::equal(a.to(b.scalar_type()), b)) {
    std::ostringstream msg;
    msg << what << ": values differ (max abs diff "
        << (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() << ")";
    return absl::InternalError(msg.str());
  }
  return absl::OkStatus();
}

absl::Status ExpectTrue(bool condition, const std::string& what) {
  return condition ? absl::OkStatus() : absl::InternalError(what);
}

std::string Env(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : fallback;
}

std::string TempPath(const std::string& name) {
  return absl::StrCat(Env("TEST_TMPDIR", "/tmp"), "/", name);
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) return absl::InternalError("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError("cannot rename " + tmp);
  }
  return absl::OkStatus();
}

std::optional<std::string> WaitForFile(const std::string& path, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      std::stringstream text;
      text << in.rdbuf();
      return text.str();
    }
    if (absl::Now() > deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

bool IsGone(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat) return true;
  std::string line;
  std::getline(stat, line);
  size_t paren = line.rfind(')');
  return paren != std::string::npos && line.size() > paren + 2 && line[paren + 2] == 'Z';
}

bool IsReaped(pid_t pid) {
  return !std::ifstream(absl::StrCat("/proc/", pid, "/stat")).good();
}

pid_t SpawnSelf(const std::map<std::string, std::string>& env) {
  std::vector<std::string> entries;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    if (env.count(entry.substr(0, entry.find('='))) == 0) entries.push_back(entry);
  }
  for (const auto& [key, value] : env) entries.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (std::string& e : entries) envp.push_back(e.data());
  envp.push_back(nullptr);
  char exe[] = "/proc/self/exe";
  char* argv[] = {exe, nullptr};
  pid_t pid = fork();
  if (pid == 0) {
    execve("/proc/self/exe", argv, envp.data());
    _exit(127);
  }
  return pid;
}

int WaitOrKill(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (true) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -2;
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

std::string DescribeWaitStatus(int status) {
  if (status == -1) return "did not finish in time (killed)";
  if (status == -2) return "could not be waited for";
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return absl::StrCat("wait status ", status);
}

}  // namespace fabric::testing
