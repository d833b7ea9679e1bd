#ifndef FABRIC_STRATEGIES_SHARED_FOLDER_H_
#define FABRIC_STRATEGIES_SHARED_FOLDER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "strategies/process_group.h"

namespace fabric::strategies {

// Checks that every rank sees the same folder `dir` (a collective): rank 0
// creates it and writes a file named and filled with a random token, every
// rank reads it back (waiting up to `visibility_wait` for a network
// filesystem to show it), rank 0 removes it. Device and inode numbers are not
// comparable across machines; the token is. A node-local path on several
// nodes gives an error on every rank naming the ranks that do not see it,
// before any checkpoint shard is written.
absl::Status CheckSharedFolder(DistributedContext& ctx, const std::string& dir,
                               absl::Duration visibility_wait = absl::Seconds(5));

// Checks that every rank sees the same checkpoint at `path` (a collective,
// read-only): the same path, and the same size and leading bytes of the file
// (a single-file checkpoint) or of its index (a sharded folder's .metadata).
absl::Status CheckSameCheckpoint(DistributedContext& ctx, const std::string& path);

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_SHARED_FOLDER_H_
