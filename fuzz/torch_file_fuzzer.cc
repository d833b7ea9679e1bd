// Fuzz target: the torch.save loader (checkpoint/torch_save.h): open the
// archive, then read every tensor, one by one and all together (Materialize).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "fuzz/fuzz_files.h"

namespace {

void ReadEach(const fabric::TorchFile& f, const fabric::Value& v, int depth) {
  if (depth > 1000) return;
  if (v.is_tensor_ref()) {
    (void)f.ReadTensor(v.as_tensor_ref());
  } else if (v.is_sequence()) {
    for (const fabric::Value& c : v.items()) ReadEach(f, c, depth + 1);
  } else if (v.is_dict()) {
    for (const auto& [k, c] : v.as_dict()) ReadEach(f, c, depth + 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fabric::fuzz::ScratchDir* const dir = new fabric::fuzz::ScratchDir();
  const std::string path =
      dir->WriteFile("checkpoint.pt", std::string_view(reinterpret_cast<const char*>(data), size));
  absl::StatusOr<std::unique_ptr<fabric::TorchFile>> f = fabric::TorchFile::Open(path);
  if (!f.ok()) return 0;
  ReadEach(**f, (*f)->root(), 0);
  (void)(*f)->Materialize((*f)->root());
  return 0;
}
