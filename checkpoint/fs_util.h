// Small filesystem helpers of the checkpoint writers: path parts, mkdir -p
// and making a directory's entries durable.
#ifndef FABRIC_CHECKPOINT_FS_UTIL_H_
#define FABRIC_CHECKPOINT_FS_UTIL_H_

#include <string>

#include "absl/status/status.h"

namespace fabric {

// "a/b/c" -> "a/b"; "c" -> "."; "/c" -> "/".
std::string DirName(const std::string& path);
// "a/b/c" -> "c".
std::string BaseName(const std::string& path);

// The status of a failed system call: errno's code and `message` plus
// strerror.
absl::Status ErrnoStatus(int err, const std::string& message);

// mkdir -p.
absl::Status EnsureDirectory(const std::string& path);
// Makes a directory's entries (created, renamed files) durable.
absl::Status FsyncDirectory(const std::string& path);

// True when `pid` named a process of this host that has ended (not this one):
// how temps named after their writer's pid are known to be abandoned.
bool ProcessIsGone(long pid);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_FS_UTIL_H_
