// Pickle: Python's pickle format for Value trees, as torch.save writes it.
//
// The writer emits protocol 2 (torch.save's default) by default, with tensors
// written exactly as torch.save writes them:
//   torch._utils._rebuild_tensor_v2(
//       persistent_id(('storage', torch.<X>Storage, key, location, numel)),
//       storage_offset, size, stride, requires_grad, collections.OrderedDict())
// (dtypes without a legacy storage class use _rebuild_tensor_v3 with a
// torch.storage.UntypedStorage sized in bytes plus the dtype, as torch does).
// The writer does not own storages: a callback names each tensor's storage.
//
// The reader is a protocol 0-5 unpickler that interprets the well-known torch
// callables (tensor rebuilds, parameters, torch.Size, torch.device,
// OrderedDict, sets, bytes) and keeps anything else as an uninterpreted
// Object, so such objects can be written back unchanged. Sets and frozensets
// load as lists. Bad input never crashes: it yields an error that names the
// file or record and the byte offset.
#ifndef FABRIC_CHECKPOINT_PICKLE_H_
#define FABRIC_CHECKPOINT_PICKLE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/value.h"

namespace fabric {
namespace pickle {

// Where a tensor's bytes are saved: the archive record data/<key>.
struct StorageId {
  std::string key;
  std::string location = "cpu";  // torch's location tag, e.g. "cpu", "cuda:0"
  int64_t storage_numel = 0;     // elements (of the tensor's dtype) in the storage
};

// Assigns a storage key to a tensor (and dedupes tensors sharing a storage).
using StorageIdFn = std::function<absl::StatusOr<StorageId>(const at::Tensor&)>;

// A persistent id (pickle's PERSID/BINPERSID) that the reader did not turn
// into a tensor, e.g. a bare storage: an Object with this callable and the id
// as its only arg. The writer writes such Objects back as persistent ids.
inline Global PersistentIdCallable() { return Global{"__fabric_pickle__", "persistent_id"}; }

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

struct UnpickleOptions {
  // Results nested deeper than this (or cyclic) are an error, so that every
  // recursive walk of a loaded Value is bounded.
  int max_depth = 1000;
};

// `what` names the data in error messages, e.g. "model.ckpt:archive/data.pkl".
absl::StatusOr<Value> Unpickle(std::string_view bytes, std::string_view what,
                               const UnpickleOptions& options = {});

}  // namespace pickle
}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_PICKLE_H_
