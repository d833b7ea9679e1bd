// Unlinking files on a background thread. Freeing a big file's blocks is slow
// where the filesystem discards them (this project's disk is mounted with
// `discard`: 0.4 s per 2 GiB), and a save that replaces a checkpoint need not
// wait for it.
#ifndef FABRIC_CHECKPOINT_BACKGROUND_UNLINKER_H_
#define FABRIC_CHECKPOINT_BACKGROUND_UNLINKER_H_

#include <string>

namespace fabric {

// Queues `path` for unlink() on the process's unlinker thread (started on
// first use, and again in a forked child). The queue drains at process exit.
// Errors are ignored: the file is garbage either way.
void UnlinkInBackground(std::string path);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_BACKGROUND_UNLINKER_H_
