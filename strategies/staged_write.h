// The second half of a save, split off so that it can run later, on another
// thread: what is written, gathered and committed once this rank's part of
// the state has been planned (and, for an asynchronous save, staged into
// host buffers the save owns). `ctx` is the process group the save
// coordinates ranks over: the training's own for a synchronous save, the
// checkpoint-only group for an asynchronous one (null for one process).
// Every rank runs it; every rank returns the same verdict.
#ifndef FABRIC_STRATEGIES_STAGED_WRITE_H_
#define FABRIC_STRATEGIES_STAGED_WRITE_H_

#include <functional>

#include "absl/status/status.h"

namespace fabric::strategies {

class DistributedContext;

using StagedWrite = std::function<absl::Status(DistributedContext* ctx)>;

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_STAGED_WRITE_H_
