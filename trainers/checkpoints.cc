#include "trainers/checkpoints.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_kind.h"
#include "checkpoint/remove_checkpoint.h"
#include "base/status_macros.h"

namespace fabric::trainers {
namespace fs = std::filesystem;

namespace {
constexpr char kPrefix[] = "step-";
constexpr char kSuffix[] = ".ckpt";
}  // namespace

std::string CheckpointName(int64_t step) { return absl::StrFormat("step-%08d.ckpt", step); }

std::optional<int64_t> ParseCheckpointName(const std::string& name) {
  if (!absl::StartsWith(name, kPrefix) || !absl::EndsWith(name, kSuffix)) return std::nullopt;
  const std::string digits =
      name.substr(sizeof(kPrefix) - 1, name.size() - (sizeof(kPrefix) - 1) - (sizeof(kSuffix) - 1));
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return std::nullopt;
  int64_t step = 0;
  if (!absl::SimpleAtoi(digits, &step)) return std::nullopt;
  return step;
}

absl::StatusOr<std::vector<CheckpointEntry>> ListCheckpoints(const std::string& dir) {
  std::vector<CheckpointEntry> out;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("checkpoint folder ", dir, ": cannot list: ", ec.message()));
  }
  for (const fs::directory_entry& e : it) {
    std::optional<int64_t> step = ParseCheckpointName(e.path().filename().string());
    if (!step) continue;
    CheckpointEntry c;
    c.step = *step;
    c.path = e.path().string();
    const CheckpointLayout layout = StatCheckpoint(c.path);
    c.is_directory = layout.is_sharded();
    c.complete = layout.complete;
    out.push_back(std::move(c));
  }
  std::sort(out.begin(), out.end(),
            [](const CheckpointEntry& a, const CheckpointEntry& b) { return a.step < b.step; });
  return out;
}

absl::StatusOr<std::optional<CheckpointEntry>> LatestCheckpoint(const std::string& dir) {
  FABRIC_ASSIGN_OR_RETURN(const std::vector<CheckpointEntry> all, ListCheckpoints(dir));
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (it->complete) return std::optional<CheckpointEntry>(*it);
  }
  return std::optional<CheckpointEntry>();
}

absl::StatusOr<std::vector<std::string>> PruneCheckpoints(const std::string& dir, int keep) {
  FABRIC_ASSIGN_OR_RETURN(const std::vector<CheckpointEntry> all, ListCheckpoints(dir));
  int64_t newest_complete = -1;
  int complete_seen = 0;
  std::vector<std::string> removed;
  // Newest first: the first `keep` complete ones stay.
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    bool remove = false;
    if (it->complete) {
      if (newest_complete < 0) newest_complete = it->step;
      ++complete_seen;
      remove = keep > 0 && complete_seen > keep;
    } else {
      remove = newest_complete >= 0 && it->step < newest_complete;
    }
    if (!remove) continue;
    FABRIC_RETURN_IF_ERROR(RemoveCheckpoint(it->path));
    removed.push_back(it->path);
  }
  // Remains of removals a crash interrupted: already no checkpoint, now gone.
  FABRIC_ASSIGN_OR_RETURN(const std::vector<std::string> remains, CleanDeletingRemains(dir));
  removed.insert(removed.end(), remains.begin(), remains.end());
  return removed;
}

int64_t PathBytes(const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return static_cast<int64_t>(fs::file_size(path, ec));
  int64_t total = 0;
  for (fs::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) total += static_cast<int64_t>(it->file_size(ec));
  }
  return total;
}

std::string ResolveUserPath(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  const char* wd = std::getenv("BUILD_WORKING_DIRECTORY");
  if (wd == nullptr || *wd == '\0') return path;
  return (fs::path(wd) / path).lexically_normal().string();
}

}  // namespace fabric::trainers
