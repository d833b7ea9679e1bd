#include "tools/verify_safetensors.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/safetensors_index.h"

namespace fabric::tools {
namespace {

constexpr uint64_t kChunk = uint64_t{16} << 20;

}  // namespace

absl::Status VerifySafetensors(const std::string& path, const VerifyOptions& options,
                               VerifyReport& report) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> c,
                          SafetensorsCheckpoint::Open(path));
  report.format = c->sharded() ? "safetensors (sharded)" : "safetensors";
  report.keys = static_cast<int64_t>(c->tensors().size());
  report.archives = static_cast<int64_t>(c->files().size());
  uint64_t total = 0;
  for (const auto& f : c->files()) total += f->file_size();
  std::vector<char> buf(kChunk);
  uint64_t done = 0;
  for (const auto& f : c->files()) {
    done += f->data_offset();  // the header, read and checked by Open
    for (const SafetensorsTensorInfo& t : f->tensors()) {
      for (uint64_t at = 0; at < t.nbytes(); at += kChunk) {
        const uint64_t n = std::min(kChunk, t.nbytes() - at);
        absl::Status s = f->file()->ReadAt(f->data_offset() + t.begin + at, buf.data(), n);
        if (!s.ok()) {
          return absl::DataLossError(absl::StrCat("'", f->path(), "': tensor '", t.name, "': ",
                                                  s.message()));
        }
        if (t.dtype == at::kBool) {
          for (uint64_t i = 0; i < n; ++i) {
            if (buf[i] != 0 && buf[i] != 1) {
              return absl::DataLossError(absl::StrCat(
                  "'", f->path(), "': tensor '", t.name, "' (BOOL): byte ", at + i, " is ",
                  static_cast<int>(static_cast<unsigned char>(buf[i])), ", not 0 or 1"));
            }
          }
        }
        done += n;
        if (options.progress) options.progress(done, total);
      }
      ++report.records;
    }
  }
  report.bytes = total;
  return absl::OkStatus();
}

}  // namespace fabric::tools
