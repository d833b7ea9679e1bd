// Test helpers: run the project's Python (real torch) on a script and read
// what it printed.
#ifndef FABRIC_CHECKPOINT_TEST_PYTHON_H_
#define FABRIC_CHECKPOINT_TEST_PYTHON_H_

#include <string>
#include <vector>

namespace fabric::testing {

// $TEST_TMPDIR, or /tmp outside Bazel.
std::string TmpDir();

// Writes `script` to a file under TmpDir(), runs `python` on it with `args`,
// and returns its exit status (-1 if it did not exit normally); stdout and
// stderr together go to *out.
int RunPythonScript(const std::string& python, const std::string& script,
                    const std::vector<std::string>& args, std::string* out);

}  // namespace fabric::testing

#endif  // FABRIC_CHECKPOINT_TEST_PYTHON_H_
