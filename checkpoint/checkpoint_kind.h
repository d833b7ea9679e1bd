// What a checkpoint path holds: a single-file (torch.save zip) checkpoint, a
// sharded (DCP folder) checkpoint, complete or not, or neither. The one place
// that decides it, next to the format's file names; strategies, the `fabric`
// tool and the trainers all ask here.
#ifndef FABRIC_CHECKPOINT_CHECKPOINT_KIND_H_
#define FABRIC_CHECKPOINT_CHECKPOINT_KIND_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "checkpoint/dcp_metadata.h"  // dcp::kMetadataFileName, ".metadata"

namespace fabric {

enum class CheckpointKind { kSingleFile, kSharded };

// Lightning's file of non-module state inside a sharded folder.
inline constexpr char kLightningMetaFile[] = "meta.pt";
using dcp::kMetadataFileName;

// From the file system alone (no byte is read): a regular file is a
// single-file checkpoint (complete: files are written atomically), a folder a
// sharded one, complete once `.metadata` is in it (written last).
struct CheckpointLayout {
  std::optional<CheckpointKind> kind;  // none: missing, or neither file nor folder
  bool complete = false;

  bool exists_as_checkpoint() const { return kind.has_value(); }
  bool is_single_file() const { return kind == CheckpointKind::kSingleFile; }
  bool is_sharded() const { return kind == CheckpointKind::kSharded; }
};
CheckpointLayout StatCheckpoint(const std::string& path);

// `<dir>/meta.pt` and `<dir>/.metadata`.
std::string LightningMetaPath(const std::string& dir);
std::string MetadataPath(const std::string& dir);

// "ckpt/" -> "ckpt" (a lone "/" stays).
std::string StripTrailingSlashes(std::string path);

// The strict check a tool makes before reading: a complete folder is
// sharded; a regular file that starts like a zip archive is a single file.
// Errors (all naming the path): NotFound when the path does not exist;
// NotFound "incomplete checkpoint (no .metadata)" for a folder with shard
// files but no `.metadata`; InvalidArgument "not a checkpoint" otherwise.
absl::StatusOr<CheckpointKind> DetectCheckpointKind(const std::string& path);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_CHECKPOINT_KIND_H_
