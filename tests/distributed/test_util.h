#ifndef FABRIC_TESTS_DISTRIBUTED_TEST_UTIL_H_
#define FABRIC_TESTS_DISTRIBUTED_TEST_UTIL_H_

// Helpers of the multi-process tests: checks that return a Status (so a
// child rank can report them through its exit code and stderr), process
// bookkeeping and small files to pass results between ranks and the test.

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace fabric::testing {

// OK when `a` and `b` have the same shape and values (exactly), else an
// error that starts with `what`.
absl::Status ExpectEqual(const at::Tensor& a, const at::Tensor& b, const std::string& what);
absl::Status ExpectTrue(bool condition, const std::string& what);

// Environment variable, or `fallback`.
std::string Env(const char* name, const std::string& fallback = "");

// A file under $TEST_TMPDIR (or /tmp).
std::string TempPath(const std::string& name);
absl::Status WriteFile(const std::string& path, const std::string& text);
// The file's contents once it exists (written atomically by WriteFile), or
// nullopt after `timeout`.
std::optional<std::string> WaitForFile(const std::string& path, absl::Duration timeout);

// True when `pid` no longer runs (gone from /proc, or a zombie).
bool IsGone(pid_t pid);
// True when `pid` does not exist at all (reaped).
bool IsReaped(pid_t pid);

// Starts this binary again with `env` added to the environment (torchrun
// style: the test is not a rank itself).
pid_t SpawnSelf(const std::map<std::string, std::string>& env);
// Waits for `pid`; SIGKILLs it after `timeout`. Returns the wait status, or -1
// when it had to be killed.
int WaitOrKill(pid_t pid, absl::Duration timeout);
std::string DescribeWaitStatus(int status);

}  // namespace fabric::testing

#endif  // FABRIC_TESTS_DISTRIBUTED_TEST_UTIL_H_
