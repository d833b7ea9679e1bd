// Fuzz target: the pickle reader (checkpoint/pickle_reader.h) and what callers do
// with its result: repr, deep copy, comparison, and writing it back.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "checkpoint/pickle_reader.h"
#include "checkpoint/pickle_writer.h"
#include "checkpoint/value.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<fabric::Value> v = fabric::pickle::Unpickle(bytes, "fuzz.pkl");
  if (!v.ok()) return 0;
  (void)v->DebugString();
  const fabric::Value copy = v->Clone();
  if (!(copy == *v)) __builtin_trap();  // a deep copy equals its original
  absl::StatusOr<std::string> again = fabric::pickle::Pickle(*v, 4);
  if (again.ok()) (void)fabric::pickle::Unpickle(*again, "fuzz.pkl (written back)");
  return 0;
}
