#include "checkpoint/checkpoint_kind.h"

#include <filesystem>
#include <fstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace fabric {

namespace fs = std::filesystem;

CheckpointLayout StatCheckpoint(const std::string& path) {
  CheckpointLayout out;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return out;
  if (fs::is_directory(st)) {
    out.kind = CheckpointKind::kSharded;
    out.complete = fs::is_regular_file(MetadataPath(path), ec);
  } else if (fs::is_regular_file(st)) {
    out.kind = CheckpointKind::kSingleFile;
    out.complete = true;
  }
  return out;
}

std::string LightningMetaPath(const std::string& dir) {
  return (fs::path(dir) / kLightningMetaFile).string();
}

std::string MetadataPath(const std::string& dir) {
  return (fs::path(dir) / kMetadataFileName).string();
}

std::string StripTrailingSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

absl::StatusOr<CheckpointKind> DetectCheckpointKind(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(fs::status(path, ec))) {
    return absl::NotFoundError(absl::StrCat("no such file or folder: '", path, "'"));
  }
  const CheckpointLayout layout = StatCheckpoint(path);
  if (layout.is_sharded()) {
    if (layout.complete) return CheckpointKind::kSharded;
    bool has_shards = false;
    for (const auto& e : fs::directory_iterator(path, ec)) {
      const std::string name = e.path().filename().string();
      if (absl::StartsWith(name, "__") && absl::EndsWith(name, ".distcp")) has_shards = true;
    }
    if (has_shards) {
      return absl::NotFoundError(absl::StrCat(
          "incomplete checkpoint (no .metadata): '", path,
          "' has shard files but no .metadata (the save did not finish?)"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "not a checkpoint: '", path, "' is a folder without .metadata or shard files"));
  }
  if (!layout.is_single_file()) {
    return absl::InvalidArgumentError(absl::StrCat("not a checkpoint: '", path,
                                                   "' is not a regular file or folder"));
  }
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {};
  if (!f.read(magic, 4) || std::string(magic, 4) != std::string("PK\x03\x04", 4)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a checkpoint: '", path, "' is not a torch.save zip archive (nor a DCP folder)"));
  }
  return CheckpointKind::kSingleFile;
}

}  // namespace fabric
