#ifndef FABRIC_TESTS_DISTRIBUTED_COLLECTIVE_CHECKS_H_
#define FABRIC_TESTS_DISTRIBUTED_COLLECTIVE_CHECKS_H_

#include "absl/status/status.h"
#include "strategies/process_group.h"

namespace fabric::testing {

// Runs every collective of DistributedContext on this rank and checks the
// results against values computed locally. All ranks must call it.
absl::Status CheckCollectives(strategies::DistributedContext& ctx);

}  // namespace fabric::testing

#endif  // FABRIC_TESTS_DISTRIBUTED_COLLECTIVE_CHECKS_H_
