// Fuzz target: the `fabric inspect` and `fabric verify` entry points
// (tools/inspect.h, tools/verify.h) on a file or a folder (fuzz_files.h).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz/fuzz_files.h"
#include "tools/inspect.h"
#include "tools/verify.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fabric::fuzz::ScratchDir* const dir = new fabric::fuzz::ScratchDir();
  const std::string path =
      dir->WriteInput(std::string_view(reinterpret_cast<const char*>(data), size), "checkpoint.pt");
  absl::StatusOr<fabric::tools::Inspection> inspection = fabric::tools::Inspect(path);
  if (inspection.ok()) {
    (void)fabric::tools::InspectionText(*inspection);
    (void)fabric::tools::InspectionJson(*inspection);
  }
  (void)fabric::tools::Verify(path);
  return 0;
}
