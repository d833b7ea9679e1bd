#include "tools/inspect_safetensors.h"

#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/safetensors_index.h"

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;

}  // namespace

absl::Status InspectSafetensors(const std::string& path, Inspection& out) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> c,
                          SafetensorsCheckpoint::Open(path));
  out.format = c->sharded() ? "safetensors (sharded)" : "safetensors";
  out.detail = c->sharded() ? absl::StrCat("Hugging Face sharded folder, ", c->files().size(),
                                           " shard(s), index ", kSafetensorsIndexFileName)
                            : absl::StrCat("Hugging Face safetensors, ",
                                           c->files()[0]->data_offset() - 8, "-byte header");
  if (c->sharded()) out.files.push_back({kSafetensorsIndexFileName, fs::file_size(c->path())});
  for (const auto& f : c->files()) {
    out.files.push_back({fs::path(f->path()).filename().string(), f->file_size()});
  }
  for (const auto& [name, t] : c->tensors()) {
    TensorEntry e;
    e.key = name;
    e.source = "safetensors";
    e.dtype = t.info->dtype;
    e.shape = t.info->shape;
    e.nbytes = t.info->nbytes();
    ChunkLayout where;  // the whole tensor: its file and byte range
    where.offsets.assign(e.shape.size(), 0);
    where.sizes = e.shape;
    where.file = fs::path(t.file->path()).filename().string();
    where.offset = static_cast<int64_t>(t.file->data_offset() + t.info->begin);
    where.length = static_cast<int64_t>(t.info->nbytes());
    e.chunks.push_back(std::move(where));
    out.tensor_bytes += e.nbytes;
    out.tensors.push_back(std::move(e));
  }
  const char* key = c->sharded() ? "metadata" : "__metadata__";
  for (const auto& [k, v] : c->metadata()) {
    out.objects.push_back({absl::StrCat(key, ".", k), "safetensors", "str", JsonString(v)});
  }
  return absl::OkStatus();
}

}  // namespace fabric::tools
