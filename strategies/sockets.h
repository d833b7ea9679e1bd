// Socket-level helpers of the process group: SIGPIPE, and which address of
// this machine peers on other nodes can reach.
#ifndef FABRIC_STRATEGIES_SOCKETS_H_
#define FABRIC_STRATEGIES_SOCKETS_H_

#include <string>

namespace fabric::strategies {

// Gloo's pairs and the TCPStore server write to sockets without MSG_NOSIGNAL:
// a write to a peer that just died would end the process silently by
// SIGPIPE instead of failing the collective with the dead rank's name. Like
// Python at startup, this ignores SIGPIPE, unless the program installed a
// handler of its own (then it is left alone). Idempotent.
void IgnoreSigpipeUnlessHandled();

// localhost, 127.x.y.z or ::1.
bool IsLoopback(const std::string& host);

// The address this machine uses to reach `host` (the route's source): Gloo
// binds it, so that peers on other nodes can connect back whatever the
// hostname resolves to. Empty when it cannot tell.
std::string LocalAddressFor(const std::string& host, int port);

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_SOCKETS_H_
