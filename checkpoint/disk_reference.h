// The disk references the checkpoint benchmarks print beside their figures:
// a dd-style raw write, and a cold page cache for the loads.
#ifndef FABRIC_CHECKPOINT_DISK_REFERENCE_H_
#define FABRIC_CHECKPOINT_DISK_REFERENCE_H_

#include <cstdint>
#include <string>

namespace fabric {

// Writes `bytes` to `path` dd-style: 16 MiB blocks of random bytes (like
// tensors: a virtual disk may store a repeated pattern faster) through
// O_DIRECT, one at a time, then fsync; removes the file. GB/s. Falls back to
// buffered writes, saying so, where O_DIRECT is refused.
double RawDirectWriteGBs(const std::string& path, uint64_t bytes);

// Syncs `path` (a file, or every file of a folder) and drops it from the page
// cache, so that the next read comes from the disk.
void DropPageCache(const std::string& path);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_DISK_REFERENCE_H_
