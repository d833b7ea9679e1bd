#ifndef FABRIC_STRATEGIES_FREE_PORT_H_
#define FABRIC_STRATEGIES_FREE_PORT_H_

#include <string>

#include "absl/status/statusor.h"

namespace fabric::strategies {

// A TCP port that is free on `host` right now: binds port 0, reads the port
// the kernel chose and closes the socket. Another process may still take it
// before we do, but the kernel hands ports out round-robin, so a collision
// right after is unlikely.
absl::StatusOr<int> FindFreePort(const std::string& host = "127.0.0.1");

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FREE_PORT_H_
