// Reading a PyTorch distributed checkpoint (DCP) folder, ours or one written
// by torch.distributed.checkpoint's FileSystemWriter.
//
// The reader needs no process group: every rank opens the folder on its own
// and reads just the boxes of the global tensors it holds (resharding: only
// the saved chunks that overlap the box are touched, and of those only the
// byte ranges the box needs); a single process can read everything (to
// consolidate a checkpoint, or to load it on one rank).
#ifndef FABRIC_CHECKPOINT_DCP_READER_H_
#define FABRIC_CHECKPOINT_DCP_READER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/file_reader.h"
#include "checkpoint/load_options.h"
#include "checkpoint/value.h"

namespace fabric {
class TorchFile;
struct TorchLoadOptions;
}  // namespace fabric

namespace fabric::dcp {

// A key of the checkpoint, as listed by CheckpointReader::Keys().
struct KeyInfo {
  std::string fqn;
  bool is_tensor = false;
  // Tensors only:
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> size;
  std::vector<ChunkStorageMetadata> chunks;
};

struct ReaderOptions {
  // Overlaps bigger than this are read in slabs (rows of dim 0) of at most
  // this many bytes, which bounds the staging memory a read needs.
  uint64_t slab_bytes = uint64_t{64} << 20;
  // Check every item read: each zip record against its archive's CRC-32,
  // and, where our writer recorded it in .metadata (StorageInfo::item_crc32),
  // the item's whole byte range. A chunk read only in part (resharding) is
  // read whole to be checked. .metadata itself is always cross-checked
  // against its items and the shard files' sizes (dcp_metadata_check.h).
  bool verify_checksums = true;

  ReaderOptions() = default;
  ReaderOptions(const LoadOptions& o)  // NOLINT(runtime/explicit): widens LoadOptions
      : verify_checksums(o.verify_checksums) {}
};

class CheckpointReader {
 public:
  // Reads and checks `<dir>/.metadata`. A folder without it is an incomplete
  // checkpoint (NotFound: "incomplete checkpoint (no .metadata): <dir>").
  // Shard files are opened on first use.
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(const std::string& dir,
                                                                ReaderOptions options = {});

  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;
  ~CheckpointReader();

  const std::string& dir() const { return dir_; }
  const Metadata& metadata() const { return metadata_; }

  // Every key, in the order of the metadata.
  std::vector<KeyInfo> Keys() const;
  bool Contains(const std::string& fqn) const { return keys_.count(std::string(fqn)) > 0; }
  // nullptr unless `fqn` is a tensor key.
  const TensorStorageMetadata* FindTensor(const std::string& fqn) const;
  // Whether `fqn` is a bytes (non-tensor) key.
  bool IsBytes(const std::string& fqn) const;

  // Fills `dst` with the box [offsets, offsets + sizes) of the global tensor
  // `fqn`. dst must have shape `sizes`; it may live on any device and have
  // any strides or dtype (values are cast like Tensor::copy_). Reads only the
  // saved chunks that overlap the box: straight into dst where the overlap
  // is one contiguous byte range of the chunk and of dst, otherwise run by
  // run (a run: the longest contiguous stretch of the chunk's rows).
  // Errors name the key and, for file problems, the file: a missing or
  // truncated shard file, chunks that do not cover the box, a saved chunk
  // that does not match the metadata.
  absl::Status ReadRegion(const std::string& fqn, const std::vector<int64_t>& offsets,
                          const std::vector<int64_t>& sizes, at::Tensor& dst) const;
  // The whole tensor into dst (shape must be the global size).
  absl::Status ReadTensorInto(const std::string& fqn, at::Tensor& dst) const;
  // The whole tensor, newly allocated on `device`.
  absl::StatusOr<at::Tensor> ReadTensor(const std::string& fqn,
                                        const c10::Device& device = c10::kCPU) const;

  // A bytes key's raw torch.save blob.
  absl::StatusOr<std::string> ReadBytes(const std::string& fqn) const;
  // A bytes key's value, unpickled (tensors inside it read to CPU).
  absl::StatusOr<Value> ReadObject(const std::string& fqn) const;

  // Everything, nested back as saved (planner_data, as DCP's
  // _EmptyStateDictLoadPlanner does; keys without a path stay top-level):
  // what torch.distributed.checkpoint.format_utils.dcp_to_torch_save writes.
  absl::StatusOr<Value> ReadStateDict(const c10::Device& device = c10::kCPU) const;

 private:
  struct Chunk;  // an opened saved chunk (its archive parsed)

  CheckpointReader(std::string dir, Metadata metadata, ReaderOptions options);
  absl::Status Index();
  absl::StatusOr<std::shared_ptr<FileReader>> File(const std::string& relative_path,
                                                   const std::string& fqn) const;
  absl::StatusOr<const StorageInfo*> Storage(const std::string& fqn,
                                             const std::vector<int64_t>* offsets) const;
  absl::StatusOr<std::shared_ptr<const Chunk>> OpenChunk(const std::string& fqn,
                                                        const TensorStorageMetadata& md,
                                                        size_t chunk_index) const;
  absl::Status ReadOverlap(const std::string& fqn, const Chunk& chunk,
                           const std::vector<int64_t>& src_lo, const std::vector<int64_t>& ext,
                           at::Tensor& view) const;
  absl::Status FileError(const StorageInfo& info, const std::string& fqn,
                         const absl::Status& s) const;
  // How an item's archive is opened: checked or not, with its item CRC.
  TorchLoadOptions LoadOptions(const StorageInfo& info) const;
  // A bytes item read whole: against its item CRC, or its records' CRCs.
  absl::Status CheckBytes(const StorageInfo& info, const std::string& fqn,
                          const std::shared_ptr<FileReader>& file, const std::string& bytes) const;

  const std::string dir_;
  const Metadata metadata_;
  const ReaderOptions options_;
  std::unordered_map<std::string, size_t> keys_;  // fqn -> state_dict_metadata index
  // "<fqn>\0<offsets>" -> storage_data index
  std::unordered_map<std::string, size_t> storage_;

  mutable absl::Mutex mu_;
  mutable std::unordered_map<std::string, std::shared_ptr<FileReader>> files_ ABSL_GUARDED_BY(mu_);
  mutable std::map<std::pair<std::string, size_t>, std::shared_ptr<const Chunk>> chunks_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace fabric::dcp

#endif  // FABRIC_CHECKPOINT_DCP_READER_H_
