// ByteSink: a sequential byte destination (a file, a socket, memory), what
// the zip and torch.save writers stream into.
#ifndef FABRIC_CHECKPOINT_BYTE_SINK_H_
#define FABRIC_CHECKPOINT_BYTE_SINK_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace fabric {

class ByteSink {
 public:
  virtual ~ByteSink() = default;
  // Appends n bytes. After an error the sink is unusable.
  virtual absl::Status Write(const void* data, size_t n) = 0;
  // Bytes written so far.
  virtual uint64_t position() const = 0;
};

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_BYTE_SINK_H_
