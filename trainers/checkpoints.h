// Versioned checkpoints in one folder: "step-<8 digits>.ckpt", a torch.save
// file (single device, DDP, FSDP "full") or a DCP folder (FSDP "sharded").
// A checkpoint is complete once its save returned: a file is written
// atomically, and a DCP folder gets its `.metadata` last. So a run killed
// mid-save leaves an incomplete folder that resume skips and the next prune
// removes, and the older checkpoints stay usable.
#ifndef FABRIC_TRAINERS_CHECKPOINTS_H_
#define FABRIC_TRAINERS_CHECKPOINTS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fabric::trainers {

// "step-00000042.ckpt".
std::string CheckpointName(int64_t step);
// The step of a name made by CheckpointName, or nullopt.
std::optional<int64_t> ParseCheckpointName(const std::string& name);

struct CheckpointEntry {
  int64_t step = 0;
  std::string path;
  bool is_directory = false;  // a DCP folder
  bool complete = false;      // a regular file, or a folder with .metadata
};

// The versioned checkpoints in `dir`, oldest step first. Only CheckpointName
// names count: temp files and ".<name>.deleting.*" remains never do. A missing `dir` is
// an empty list; an unreadable one an error naming it.
absl::StatusOr<std::vector<CheckpointEntry>> ListCheckpoints(const std::string& dir);

// The complete checkpoint with the highest step, or nullopt.
absl::StatusOr<std::optional<CheckpointEntry>> LatestCheckpoint(const std::string& dir);

// Keeps the `keep` newest complete checkpoints (keep <= 0: keep all) and
// removes the older ones, plus incomplete ones older than the newest complete
// checkpoint (leftovers of an interrupted save), each with RemoveCheckpoint
// (renamed out of the listing first, so a crash mid-delete never leaves a
// `.metadata` without its shards), and the remains of interrupted removals
// (checkpoint/remove_checkpoint.h). Call it only after a save
// has been committed, so a crash never leaves fewer than `keep` good ones.
// Returns the paths it removed.
absl::StatusOr<std::vector<std::string>> PruneCheckpoints(const std::string& dir, int keep);

// Bytes under `path` (a file, or a folder recursively).
int64_t PathBytes(const std::string& path);

// `path` made absolute against the folder `bazel run` was started from
// (BUILD_WORKING_DIRECTORY), so relative flags mean what the user typed;
// unchanged when absolute or outside bazel run.
std::string ResolveUserPath(const std::string& path);

}  // namespace fabric::trainers

#endif  // FABRIC_TRAINERS_CHECKPOINTS_H_
