#include "checkpoint/fs_util.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"

namespace fabric {

std::string DirName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

absl::Status ErrnoStatus(int err, const std::string& message) {
  return absl::ErrnoToStatus(err, message);
}

absl::Status EnsureDirectory(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("EnsureDirectory: empty path");
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (prefix.empty() || prefix == "/") continue;
    if (mkdir(prefix.c_str(), 0755) == 0) continue;
    const int err = errno;
    struct stat st;
    if (err == EEXIST && stat(prefix.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) continue;
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create directory '", path, "': '", prefix, "' is not a directory"));
    }
    return ErrnoStatus(err, absl::StrCat("cannot create directory '", prefix, "'"));
  }
  return absl::OkStatus();
}

absl::Status FsyncDirectory(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot open directory '", path, "'"));
  }
  absl::Status s;
  // Some filesystems cannot sync a directory (EINVAL); nothing more to do there.
  if (fsync(fd) != 0 && errno != EINVAL) {
    s = ErrnoStatus(errno, absl::StrCat("syncing directory '", path, "' failed"));
  }
  close(fd);
  return s;
}

bool ProcessIsGone(long pid) {
  return pid > 0 && pid != getpid() && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

}  // namespace fabric
