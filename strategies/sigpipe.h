#ifndef FABRIC_STRATEGIES_SIGPIPE_H_
#define FABRIC_STRATEGIES_SIGPIPE_H_

namespace fabric::strategies {

// Gloo's pairs and the TCPStore server write to sockets without MSG_NOSIGNAL:
// a write to a peer that just died would end the process silently by
// SIGPIPE instead of failing the collective with the dead rank's name. Like
// Python at startup, this ignores SIGPIPE, unless the program installed a
// handler of its own (then it is left alone). Idempotent.
void IgnoreSigpipeUnlessHandled();

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_SIGPIPE_H_
