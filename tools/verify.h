// `fabric verify`: reads every byte of a checkpoint and checks that it is
// internally consistent, stopping at the first problem.
//
// Sharded folder: `.metadata` parses; every tensor's chunks lie in bounds and
// cover it exactly once; every chunk and bytes key has a storage entry and
// every storage entry belongs to a key; every referenced byte range exists in
// its shard file and items of one file do not overlap; every item is a well
// formed torch.save archive (zip directory, pickle) whose tensor has the
// metadata's dtype and the chunk's shape and whose storage record is big
// enough; every zip record's CRC-32 matches; `meta.pt`, when present, passes
// the single-file checks. Single file: the zip and pickle parse, every
// tensor's storage record exists and is big enough, every CRC matches.
#ifndef FABRIC_TOOLS_VERIFY_H_
#define FABRIC_TOOLS_VERIFY_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace fabric::tools {

struct VerifyOptions {
  // Called as record bytes are checked: bytes done, bytes in total.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct VerifyReport {
  std::string format;      // "sharded" or "single-file"
  int64_t keys = 0;        // keys of .metadata (sharded), top-level keys (file)
  int64_t archives = 0;    // torch.save archives opened
  int64_t records = 0;     // zip records CRC-checked
  uint64_t bytes = 0;      // bytes of those records
};

// OK with a report, or the first problem (DataLoss, NotFound, ...) with a
// message that names the file and the key.
absl::StatusOr<VerifyReport> Verify(const std::string& path, const VerifyOptions& options = {});

}  // namespace fabric::tools

#endif  // FABRIC_TOOLS_VERIFY_H_
