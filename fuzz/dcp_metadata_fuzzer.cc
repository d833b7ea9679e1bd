// Fuzz target: the DCP `.metadata` reader (checkpoint/dcp_metadata.h). What
// it accepts must also survive being written back and read again.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "checkpoint/dcp_metadata.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<fabric::dcp::Metadata> md = fabric::dcp::ParseMetadata(bytes, "fuzz/.metadata");
  if (!md.ok()) return 0;
  absl::StatusOr<std::string> again = fabric::dcp::SerializeMetadata(*md);
  if (!again.ok()) return 0;
  absl::StatusOr<fabric::dcp::Metadata> back =
      fabric::dcp::ParseMetadata(*again, "fuzz/.metadata (written back)");
  if (!back.ok()) {
    std::fprintf(stderr, "metadata we wrote does not read back: %s\n",
                 std::string(back.status().message()).c_str());
    __builtin_trap();
  }
  return 0;
}
