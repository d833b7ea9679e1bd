// The pickle writer: Value trees as torch.save pickles them.
//
// It emits protocol 2 (torch.save's default) by default, with tensors written
// exactly as torch.save writes them:
//   torch._utils._rebuild_tensor_v2(
//       persistent_id(('storage', torch.<X>Storage, key, location, numel)),
//       storage_offset, size, stride, requires_grad, collections.OrderedDict())
// (dtypes without a legacy storage class use _rebuild_tensor_v3 with a
// torch.storage.UntypedStorage sized in bytes plus the dtype, as torch does).
// The writer does not own storages: a callback names each tensor's storage.
// Objects whose callable is PersistentIdCallable() (pickle_format.h) are
// written back as persistent ids.
#ifndef FABRIC_CHECKPOINT_PICKLE_WRITER_H_
#define FABRIC_CHECKPOINT_PICKLE_WRITER_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/value.h"

namespace fabric::pickle {

// Where a tensor's bytes are saved: the archive record data/<key>.
struct StorageId {
  std::string key;
  std::string location = "cpu";  // torch's location tag, e.g. "cpu", "cuda:0"
  int64_t storage_numel = 0;     // elements (of the tensor's dtype) in the storage
};

// Assigns a storage key to a tensor (and dedupes tensors sharing a storage).
using StorageIdFn = std::function<absl::StatusOr<StorageId>(const at::Tensor&)>;

struct PickleOptions {
  int protocol = 2;  // 2 to 5
  // Required when the value holds kTensor values; TensorRefs need none.
  StorageIdFn storage_id;
  // Nesting deeper than this (or a cycle) is an error.
  int max_depth = 1000;
};

// Appends the pickle of `v` to `*out`. On error `*out` may hold a partial
// pickle.
absl::Status PickleTo(const Value& v, const PickleOptions& options, std::string* out);
absl::StatusOr<std::string> Pickle(const Value& v, const PickleOptions& options);
// Values without kTensor leaves.
absl::StatusOr<std::string> Pickle(const Value& v, int protocol = 2);
// With tensors: `storage_id` names each tensor's storage.
absl::StatusOr<std::string> Pickle(const Value& v, StorageIdFn storage_id, int protocol = 2);

}  // namespace fabric::pickle

#endif  // FABRIC_CHECKPOINT_PICKLE_WRITER_H_
