// `fabric convert SOURCE --output_file DEST`: any checkpoint we read (a
// torch.save file or DCP folder, ours, Python's or Lightning's; safetensors)
// to safetensors for Hugging Face and deployment, or back to torch.save.
//
//   DEST ends in .safetensors      one safetensors file
//   --max_shard_size SIZE          DEST is a folder in Hugging Face's layout:
//                                  model-0000k-of-0000n.safetensors + the
//                                  model.safetensors.index.json (one shard:
//                                  model.safetensors, as save_pretrained)
//   otherwise                      one torch.save file of the tensors (a bare
//                                  state dict; nested under --entry if given)
//
// The tensors of one entry are exported ("model" unless --entry names another;
// a file that is itself a state dict is taken whole), flattened with '.'.
// Memory stays bounded: the header is laid out first, then every tensor is
// read and written in slabs of rows (with --dtype, cast slab by slab), so the
// whole model is never in memory. Every file is written atomically; a folder's
// index is written last, so a folder without it is an incomplete export.
#ifndef FABRIC_TOOLS_CONVERT_H_
#define FABRIC_TOOLS_CONVERT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"

namespace fabric::tools {

struct ConvertOptions {
  std::string output_file;  // required
  std::string entry = "model";
  bool entry_given = false;  // --entry was passed (a missing entry is then an error)
  // Bytes per shard (a folder output); nullopt: one file.
  std::optional<uint64_t> max_shard_size;
  // Cast floating-point tensors (F64, F32, F16, BF16) to this dtype; others
  // are written as they are.
  std::optional<at::ScalarType> dtype;
  bool force = false;  // replace an existing output
  uint64_t slab_bytes = uint64_t{32} << 20;
  bool direct_io = true;
  std::function<void(uint64_t done, uint64_t total)> progress;
  const std::atomic<bool>* cancel = nullptr;
};

struct ConvertStats {
  std::string output;
  std::string format;  // "safetensors", "safetensors (sharded)", "torch.save"
  int64_t tensors = 0;
  int64_t files = 0;
  uint64_t bytes = 0;
  std::vector<std::string> skipped;  // non-tensor keys left out
};

// Errors: AlreadyExists for an existing output without `force`;
// InvalidArgument / NotFound / DataLoss naming the file and key otherwise;
// Cancelled when `cancel` was raised (no output appears).
absl::StatusOr<ConvertStats> Convert(const std::string& source, const ConvertOptions& options);

// "5GB" (10^9), "500MB", "2GiB" (2^30), "64KiB", "1000" (bytes), as
// transformers' max_shard_size.
absl::StatusOr<uint64_t> ParseShardSize(const std::string& text);
// "bf16"/"bfloat16" and "fp16"/"float16"/"half".
absl::StatusOr<at::ScalarType> ParseCastDtype(const std::string& text);

}  // namespace fabric::tools

#endif  // FABRIC_TOOLS_CONVERT_H_
