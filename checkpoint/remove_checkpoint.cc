#include "checkpoint/remove_checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>  // renameat2 (glibc >= 2.28)
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/fs_util.h"

namespace fabric {
namespace fs = std::filesystem;

namespace {
constexpr char kDeletingTag[] = ".deleting.";
constexpr char kSavingTag[] = ".saving.";

// Unique within a process (counter) and across processes (pid, clock).
std::string Nonce() {
  static std::atomic<uint64_t> counter{0};
  const uint64_t t = static_cast<uint64_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  return absl::StrCat(absl::Hex(t ^ (counter.fetch_add(1) << 48)));
}

absl::Status RemoveTree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot remove ", path, ": ", ec.message()));
  }
  return absl::OkStatus();
}
}  // namespace

std::string DeletingName(const std::string& name) {
  return absl::StrCat(".", name, kDeletingTag, getpid(), ".", Nonce());
}

bool IsDeletingName(const std::string& name) {
  return absl::StartsWith(name, ".") && absl::StrContains(name, kDeletingTag);
}

absl::Status RemoveCheckpoint(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return absl::OkStatus();
  const std::string parent = DirName(path);
  const std::string doomed = absl::StrCat(parent, "/", DeletingName(BaseName(path)));
  if (std::rename(path.c_str(), doomed.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot remove checkpoint ", path,
                                           ": renaming it to ", doomed, " failed"));
  }
  // Durable before any content goes: after a crash the old name is gone.
  FABRIC_RETURN_IF_ERROR(FsyncDirectory(parent));
  return RemoveTree(doomed);
}

std::string SavingName(const std::string& name) {
  return absl::StrCat(".", name, kSavingTag, getpid(), ".", Nonce());
}

namespace {
// After `path` was committed: removes what killed saves and removals of it
// left beside it: deleting remains, and saving folders whose process is gone.
bool ProcessGone(const std::string& name, size_t pid_at) {
  return ProcessIsGone(std::strtol(name.c_str() + pid_at, nullptr, 10));
}

// After `path` was committed: removes what killed saves and removals of it
// left beside it (saving folders and deleting remains whose process is gone;
// a live one may be another thread's removal in progress).
void CleanStaleRemainsOf(const std::string& path) {
  const std::string parent = DirName(path), base = BaseName(path);
  const std::string saving = absl::StrCat(".", base, kSavingTag);
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    bool stale = false;
    if (IsDeletingName(name) && absl::StrContains(name, absl::StrCat(".", base, "."))) {
      stale = ProcessGone(name, name.rfind(kDeletingTag) + std::strlen(kDeletingTag));
    } else if (absl::StartsWith(name, saving)) {
      stale = ProcessGone(name, saving.size());
    }
    if (stale) RemoveTree(e.path().string()).IgnoreError();
  }
}

// Puts fresh at path (ReplaceCheckpoint, before the clean-up).
absl::Status SwapIn(const std::string& fresh, const std::string& path) {
  const std::string parent = DirName(path);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) {
    if (std::rename(fresh.c_str(), path.c_str()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("cannot rename ", fresh, " to ", path));
    }
    return FsyncDirectory(parent);
  }
  if (renameat2(AT_FDCWD, fresh.c_str(), AT_FDCWD, path.c_str(), RENAME_EXCHANGE) == 0) {
    FABRIC_RETURN_IF_ERROR(FsyncDirectory(parent));
    return RemoveCheckpoint(fresh);  // now the old checkpoint
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
    return ErrnoStatus(errno, absl::StrCat("cannot swap ", fresh, " with ", path));
  }
  const std::string doomed = absl::StrCat(parent, "/", DeletingName(BaseName(path)));
  if (std::rename(path.c_str(), doomed.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot rename ", path, " to ", doomed));
  }
  if (std::rename(fresh.c_str(), path.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot rename ", fresh, " to ", path, " (the old ",
                                           "checkpoint is at ", doomed, ")"));
  }
  FABRIC_RETURN_IF_ERROR(FsyncDirectory(parent));
  return RemoveTree(doomed);
}
}  // namespace

absl::Status ReplaceCheckpoint(const std::string& fresh, const std::string& path) {
  absl::Status s = SwapIn(fresh, path);
  if (s.ok()) CleanStaleRemainsOf(path);
  return s;
}

absl::StatusOr<std::vector<std::string>> CleanDeletingRemains(const std::string& dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return removed;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  }
  for (const fs::directory_entry& e : it) {
    if (!IsDeletingName(e.path().filename().string())) continue;
    FABRIC_RETURN_IF_ERROR(RemoveTree(e.path().string()));
    removed.push_back(e.path().string());
  }
  return removed;
}

}  // namespace fabric
