#include "checkpoint/test_python.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace fabric::testing {

std::string TmpDir() {
  const char* tmp = std::getenv("TEST_TMPDIR");
  return tmp ? tmp : "/tmp";
}

int RunPythonScript(const std::string& python, const std::string& script,
                    const std::vector<std::string>& args, std::string* out) {
  static int counter = 0;
  const std::string py = absl::StrCat(TmpDir(), "/script_", getpid(), "_", counter++, ".py");
  std::ofstream(py) << script;
  std::string cmd = absl::StrCat("'", python, "' '", py, "'");
  for (const std::string& a : args) absl::StrAppend(&cmd, " '", a, "'");
  absl::StrAppend(&cmd, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  out->clear();
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  const int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace fabric::testing
