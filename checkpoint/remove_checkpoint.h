// Deleting a checkpoint is a commit too. A plain recursive delete removes
// files in directory order, so a crash can leave a folder whose `.metadata`
// outlives the shards it names, and every listing would call it complete.
// RemoveCheckpoint first renames the file or folder to a name no listing
// accepts, makes that rename durable (fsync of the parent), and only then
// deletes the contents. A crash at any point leaves either the untouched
// checkpoint or a "deleting" remain that listings skip and
// CleanDeletingRemains removes later.
//
// Replacing a checkpoint keeps the old one until the new one is committed:
// the new one is written under SavingName beside it, committed there, then
// swapped in by ReplaceCheckpoint.
#ifndef FABRIC_CHECKPOINT_REMOVE_CHECKPOINT_H_
#define FABRIC_CHECKPOINT_REMOVE_CHECKPOINT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fabric {

// ".<name>.deleting.<pid>.<nonce>": hidden, and never a checkpoint name.
std::string DeletingName(const std::string& name);
// True for a name made by DeletingName.
bool IsDeletingName(const std::string& name);

// Removes the checkpoint (file or folder) at `path` as described above.
// A missing path is OK (nothing to do). Errors name the path.
absl::Status RemoveCheckpoint(const std::string& path);

// ".<name>.saving.<pid>.<nonce>": where a replacement is written before it is
// swapped in. Hidden, never a checkpoint name; a crash leaves it as a
// recognizable temp (not cleaned automatically: a save may be running).
std::string SavingName(const std::string& name);

// Puts the committed checkpoint `fresh` (a file or folder in the same
// folder as `path`) at `path`, and removes what was there, if anything.
// With renameat2(RENAME_EXCHANGE) (Linux >= 3.15 on ext4, xfs, btrfs, tmpfs)
// the swap is one atomic step: a reader sees the old or the new checkpoint,
// never neither. Where the filesystem refuses it (EINVAL, e.g. some network
// and FUSE filesystems), the old one is renamed to a DeletingName first and
// the new one renamed in after: a crash between leaves no checkpoint at
// `path` (the old one under its deleting name, the new one under `fresh`);
// nothing looks complete that is not.
absl::Status ReplaceCheckpoint(const std::string& fresh, const std::string& path);

// Deletes the remains of interrupted removals (IsDeletingName entries) in
// `dir`; returns their paths. A missing `dir` is an empty list.
absl::StatusOr<std::vector<std::string>> CleanDeletingRemains(const std::string& dir);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_REMOVE_CHECKPOINT_H_
