// `fabric inspect`: what a checkpoint holds, without reading tensor data.
#ifndef FABRIC_TOOLS_INSPECT_H_
#define FABRIC_TOOLS_INSPECT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"
#include "checkpoint/load_options.h"

namespace fabric::tools {

// One saved chunk of a sharded tensor and where its archive lies.
struct ChunkLayout {
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;
  std::string file;  // relative to the folder
  int64_t offset = 0;
  int64_t length = 0;
};

struct TensorEntry {
  std::string key;     // flattened: "model.layer.weight"
  std::string source;  // "dcp", "meta.pt" or "file"
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  std::vector<ChunkLayout> chunks;  // sharded only
};

struct ObjectEntry {
  std::string key;
  std::string source;
  std::string type;  // "int", "str", "list", "collections.OrderedDict", ...
  std::string repr;  // abbreviated Python-like repr
};

struct FileEntry {
  std::string name;
  uint64_t bytes = 0;
};

struct Inspection {
  std::string path;
  std::string format;  // "sharded" or "single-file"
  std::string detail;  // e.g. "PyTorch DCP, version 1.0.0"
  // Sharded: 1 + the highest rank that wrote a shard file. A single file
  // does not record it (nullopt).
  std::optional<int> world_size;
  std::vector<FileEntry> files;
  std::vector<TensorEntry> tensors;
  std::vector<ObjectEntry> objects;
  uint64_t tensor_bytes = 0;
};

// Reads `.metadata` and the small non-tensor values (sharded), or the pickle
// (single file); tensor bytes are not read.
// What it reads (data.pkl, .metadata, bytes values, meta.pt) is checked
// as every load checks it (LoadOptions).
absl::StatusOr<Inspection> Inspect(const std::string& path, const LoadOptions& load = {});

std::string InspectionText(const Inspection& inspection);
std::string InspectionJson(const Inspection& inspection);

// JSON string literal of `s` (quotes included).
std::string JsonString(const std::string& s);

}  // namespace fabric::tools

#endif  // FABRIC_TOOLS_INSPECT_H_
