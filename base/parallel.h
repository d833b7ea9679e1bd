// ParallelFor: independent fallible tasks on a few threads, for I/O that
// gains from several requests in flight (reads of many tensors or shards).
#ifndef FABRIC_BASE_PARALLEL_H_
#define FABRIC_BASE_PARALLEL_H_

#include <cstddef>
#include <functional>

#include "absl/status/status.h"

namespace fabric {

// Runs task(0) .. task(n - 1) on up to `threads` threads (the caller's among
// them), each index once, in rising order of start. After a failure no
// further task starts; the error returned is that of the lowest failed index,
// so that the message does not depend on thread timing.
absl::Status ParallelFor(size_t n, int threads, const std::function<absl::Status(size_t)>& task);

}  // namespace fabric

#endif  // FABRIC_BASE_PARALLEL_H_
