// Test checkpoints for the `fabric` tool tests and benchmark, written with the
// library's DCP writer as 1..N "ranks" from one process.
#ifndef FABRIC_TOOLS_TEST_UTIL_H_
#define FABRIC_TOOLS_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/value.h"

namespace fabric::tools {

// A fresh (emptied) path under $TEST_TMPDIR (or /tmp).
std::string FreshTestPath(const std::string& name);

// The state a training run would save: model weights (float32, bfloat16,
// float64, int64, an empty tensor), FSDP-style optimizer state keyed by
// parameter name with a 0-dim step, and param_groups.
Value TestState();
// Lightning's meta.pt: plain values and tensors, two of which share storage.
Value TestMeta();

// Writes TestState() as a `world_size`-rank checkpoint into `dir`: tensors
// split into row blocks across ranks (one by columns), non-tensor values on
// rank 0, `.metadata`, and with `with_meta` a Lightning meta.pt. Returns what
// it consolidates to (the state, meta.pt merged in).
absl::StatusOr<Value> WriteTestCheckpoint(const std::string& dir, int world_size,
                                          bool with_meta);

// A big checkpoint: `num_tensors` float32 matrices of `tensor_bytes` each
// (rows of 4 KiB), row-sharded over `world_size` ranks, model + optimizer
// keys, written rank by rank (memory: one rank's share). Returns the bytes.
absl::StatusOr<uint64_t> WriteLargeCheckpoint(const std::string& dir, int world_size,
                                              int num_tensors, uint64_t tensor_bytes);

// Runs argv[0] with its arguments, capturing stdout and stderr; returns the
// exit code (or 128 + signal), the wall time and wait4's ru_maxrss. Beware:
// after posix_spawn (vfork + exec) ru_maxrss includes the parent's own peak,
// so a child's true peak is best read from its VmHWM.
struct ChildResult {
  int exit_code = -1;
  long max_rss_kib = 0;
  double seconds = 0;
  std::string out, err;
};
ChildResult RunChild(const std::vector<std::string>& argv);

}  // namespace fabric::tools

#endif  // FABRIC_TOOLS_TEST_UTIL_H_
