// Fuzz target: the zip reader (checkpoint/zip_reader.h) on a file: open,
// read every record that is small enough, check every CRC.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "checkpoint/file_reader.h"
#include "checkpoint/zip_reader.h"
#include "fuzz/fuzz_files.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fabric::fuzz::ScratchDir* const dir = new fabric::fuzz::ScratchDir();
  const std::string path =
      dir->WriteFile("archive.zip", std::string_view(reinterpret_cast<const char*>(data), size));
  absl::StatusOr<std::shared_ptr<fabric::FileReader>> file = fabric::FileReader::Open(path);
  if (!file.ok()) return 0;
  absl::StatusOr<std::unique_ptr<fabric::ZipReader>> zip = fabric::ZipReader::Open(*file);
  if (!zip.ok()) return 0;
  for (const fabric::ZipReader::Entry& e : (*zip)->entries()) {
    if (e.size <= (uint64_t{1} << 20)) (void)(*zip)->ReadRecord(e.name);
    (void)(*zip)->VerifyCrc(e.name);
  }
  return 0;
}
