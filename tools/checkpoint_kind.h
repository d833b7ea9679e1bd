// What a path given to the `fabric` tool is: a single-file (torch.save zip)
// checkpoint, a sharded (DCP folder) checkpoint, or neither.
#ifndef FABRIC_TOOLS_CHECKPOINT_KIND_H_
#define FABRIC_TOOLS_CHECKPOINT_KIND_H_

#include <string>

#include "absl/status/statusor.h"

namespace fabric {
namespace tools {

enum class CheckpointKind { kSingleFile, kSharded };

// Lightning's file of non-module state inside a sharded folder.
inline constexpr char kLightningMetaFile[] = "meta.pt";

// "ckpt/" -> "ckpt" (a lone "/" stays).
std::string StripTrailingSlashes(std::string path);

// A folder with `.metadata` is sharded; a regular file that starts like a
// zip archive is a single file. Errors (all naming the path): NotFound when
// the path does not exist; NotFound "incomplete checkpoint (no .metadata)"
// for a folder with shard files but no `.metadata`; InvalidArgument "not a
// checkpoint" otherwise.
absl::StatusOr<CheckpointKind> DetectCheckpointKind(const std::string& path);

}  // namespace tools
}  // namespace fabric

#endif  // FABRIC_TOOLS_CHECKPOINT_KIND_H_
