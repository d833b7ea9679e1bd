#include "tools/checkpoint_kind.h"

#include <filesystem>
#include <fstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace fabric {
namespace tools {

namespace fs = std::filesystem;

std::string StripTrailingSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

absl::StatusOr<CheckpointKind> DetectCheckpointKind(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    return absl::NotFoundError(absl::StrCat("no such file or folder: '", path, "'"));
  }
  if (fs::is_directory(st)) {
    if (fs::is_regular_file(fs::path(path) / ".metadata", ec)) return CheckpointKind::kSharded;
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
  if (!fs::is_regular_file(st)) {
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

}  // namespace tools
}  // namespace fabric
