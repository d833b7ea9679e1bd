#include "checkpoint/pickle_calls.h"

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/pickle_format.h"
#include "checkpoint/pickle_text.h"

namespace fabric::pickle {
namespace {

bool IntSequence(const Value& v, std::vector<int64_t>* out) {
  if (!v.is_sequence()) return false;
  out->clear();
  for (const Value& item : v.items()) {
    if (!item.is_int()) return false;
    out->push_back(item.as_int());
  }
  return true;
}

absl::Status Malformed(const Global& g, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("malformed ", g.ToString(), " call: ", why));
}

// The TensorRef of torch._utils._rebuild_tensor{,_v2,_v3}(storage, offset,
// size, stride[, requires_grad, hooks[, dtype]][, metadata]).
absl::Status RebuildTensor(const Global& g, int version, const std::vector<Value>& args,
                           InputLimits& limits, Value* out) {
  const size_t min_args = version == 1 ? 4 : version == 2 ? 6 : 7;
  if (args.size() < min_args || args.size() > min_args + 1) {
    return Malformed(g, absl::StrCat(args.size(), " arguments"));
  }
  if (!IsPersistentId(args[0])) return Malformed(g, "storage is not a persistent id");
  const Value& pid = (*args[0].as_object().args)[0];
  if (!pid.is_tuple() || pid.items().size() != 5 || !pid.items()[0].is_string() ||
      pid.items()[0].as_string() != "storage") {
    return Malformed(g, "storage id is not ('storage', type, key, location, numel)");
  }
  const std::vector<Value>& id = pid.items();
  TensorRef ref;
  if (id[2].is_string()) {
    ref.storage_key = id[2].as_string();
  } else if (id[2].is_int()) {
    ref.storage_key = std::to_string(id[2].as_int());
  } else {
    return Malformed(g, "storage key is not a string");
  }
  if (!id[3].is_string()) return Malformed(g, "storage location is not a string");
  ref.location = id[3].as_string();
  if (!id[4].is_int() || id[4].as_int() < 0) return Malformed(g, "bad storage size");
  if (!id[1].is_global()) return Malformed(g, "storage type is not a class");

  // The storage: a typed legacy class, or untyped bytes.
  const Global& storage_type = id[1].as_global();
  at::ScalarType storage_dtype;
  if (storage_type.name == "UntypedStorage" &&
      (storage_type.module == "torch" || storage_type.module == "torch.storage")) {
    storage_dtype = at::kByte;
  } else if (std::optional<at::ScalarType> d = DtypeFromStorageClass(storage_type.name);
             d && (storage_type.module == "torch" || storage_type.module == "torch.cuda")) {
    storage_dtype = *d;
  } else {
    return Malformed(g, absl::StrCat("unsupported storage type ", storage_type.ToString(),
                                     " for storage '", ref.storage_key, "'"));
  }
  ref.dtype = storage_dtype;
  if (version == 3) {
    std::optional<at::ScalarType> d;
    if (args[6].is_global() && args[6].as_global().module == "torch") {
      d = DtypeFromName(args[6].as_global().name);
    }
    if (!d) return Malformed(g, "dtype argument is not a known torch dtype");
    ref.dtype = *d;
  }
  // Storage size in the tensor's elements.
  const int64_t storage_item = static_cast<int64_t>(c10::elementSize(storage_dtype));
  const int64_t item = static_cast<int64_t>(c10::elementSize(ref.dtype));
  const int64_t numel = id[4].as_int();
  if (numel > std::numeric_limits<int64_t>::max() / storage_item) {
    return Malformed(g, "storage size overflows");
  }
  const int64_t nbytes = numel * storage_item;
  if (nbytes % item != 0) {
    return Malformed(g, absl::StrCat("storage of ", nbytes, " bytes is not a whole number of ",
                                     c10::toString(ref.dtype), " elements"));
  }
  ref.storage_numel = nbytes / item;

  if (!args[1].is_int() || args[1].as_int() < 0) return Malformed(g, "bad storage offset");
  ref.storage_offset = args[1].as_int();
  if (!IntSequence(args[2], &ref.sizes)) return Malformed(g, "size is not a tuple of ints");
  if (!IntSequence(args[3], &ref.strides)) return Malformed(g, "stride is not a tuple of ints");
  FABRIC_RETURN_IF_ERROR(limits.ChargeCopy(8 * (ref.sizes.size() + ref.strides.size()) +
                                           ref.storage_key.size() + ref.location.size()));
  if (ref.sizes.size() != ref.strides.size()) {
    return Malformed(g, "size and stride differ in length");
  }
  if (version >= 2) {
    if (!args[4].is_bool()) return Malformed(g, "requires_grad is not a bool");
    ref.requires_grad = args[4].as_bool();
  }
  // The view must lie inside its storage, so that reading it later is safe.
  bool empty = false;
  __int128 numel_bytes = item;  // stays below 2^63 (so numel() cannot overflow)
  for (size_t i = 0; i < ref.sizes.size(); ++i) {
    if (ref.sizes[i] < 0 || ref.strides[i] < 0) return Malformed(g, "negative size or stride");
    if (ref.sizes[i] == 0) empty = true;
    numel_bytes *= ref.sizes[i];
    if (numel_bytes > std::numeric_limits<int64_t>::max()) {
      return Malformed(g, "the tensor has more than 2^63 bytes");
    }
  }
  if (!empty) {
    __int128 last = ref.storage_offset;
    for (size_t i = 0; i < ref.sizes.size(); ++i) {
      last += static_cast<__int128>(ref.sizes[i] - 1) * ref.strides[i];
      if (last >= ref.storage_numel) break;
    }
    if (last >= ref.storage_numel) {
      return Malformed(g, absl::StrCat("tensor view exceeds storage '", ref.storage_key,
                                       "' of ", ref.storage_numel, " elements"));
    }
  }
  *out = Value(std::move(ref));
  return absl::OkStatus();
}

// callable(*args) (or cls.__new__(cls, *args) with newobj), with the
// well-known callables interpreted; anything else becomes an Object.
absl::Status Call(const Value& callable, std::vector<Value> args, bool newobj,
                  InputLimits& limits, Value* out, int nesting = 0) {
  if (!callable.is_global()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot call a ", callable.kind_name(), " (only named globals)"));
  }
  FABRIC_RETURN_IF_ERROR(limits.ChargeCopyOf(args));
  const Global& g = callable.as_global();
  const std::string& m = g.module;
  const std::string& n = g.name;
  if (m == "torch._utils") {
    if (n == "_rebuild_tensor") return RebuildTensor(g, 1, args, limits, out);
    if (n == "_rebuild_tensor_v2") return RebuildTensor(g, 2, args, limits, out);
    if (n == "_rebuild_tensor_v3") return RebuildTensor(g, 3, args, limits, out);
    if ((n == "_rebuild_parameter" || n == "_rebuild_parameter_with_state") &&
        args.size() >= 2 && args[0].is_tensor_ref() && args[1].is_bool()) {
      TensorRef ref = args[0].as_tensor_ref();
      ref.requires_grad = args[1].as_bool();
      *out = Value(std::move(ref));
      return absl::OkStatus();
    }
  } else if (m == "torch._tensor" && n == "_rebuild_from_type_v2") {
    // (func, type, args, state): the tensor is func(*args); the subclass and
    // its Python state are not kept.
    if (args.size() != 4 || !args[0].is_global() || !args[2].is_tuple()) {
      return Malformed(g, "expected (func, type, args, state)");
    }
    if (nesting > 8) return Malformed(g, "nested too deeply");
    return Call(args[0], args[2].items(), false, limits, out, nesting + 1);  // charged there
  } else if (m == "collections" && n == "OrderedDict") {
    if (args.empty()) {
      *out = Value::MakeDict();
      return absl::OkStatus();
    }
    if (args.size() == 1 && args[0].is_sequence()) {
      Dict d;
      for (const Value& pair : args[0].items()) {
        if (!pair.is_sequence() || pair.items().size() != 2) {
          return Malformed(g, "items are not pairs");
        }
        FABRIC_RETURN_IF_ERROR(limits.ChargeCopyOf(pair.items()));
        FABRIC_RETURN_IF_ERROR(limits.CheckDictKey(pair.items()[0]));
        d.Set(pair.items()[0], pair.items()[1]);
      }
      *out = Value(std::move(d));
      return absl::OkStatus();
    }
  } else if (m == "torch" && n == "Size") {
    if (args.size() == 1 && args[0].is_sequence()) {
      FABRIC_RETURN_IF_ERROR(limits.ChargeCopyOf(args[0].items()));
      *out = Value::Tuple(args[0].items());
      return absl::OkStatus();
    }
  } else if (m == "torch" && n == "device") {
    if (args.size() == 1 && args[0].is_string()) {
      *out = args[0];
      return absl::OkStatus();
    }
    if (args.size() == 2 && args[0].is_string() && args[1].is_int()) {
      *out = Value(absl::StrCat(args[0].as_string(), ":", args[1].as_int()));
      return absl::OkStatus();
    }
  } else if (m == "builtins" && (n == "set" || n == "frozenset")) {
    if (args.empty()) {
      *out = Value::List();
      return absl::OkStatus();
    }
    if (args.size() == 1 && args[0].is_sequence()) {
      FABRIC_RETURN_IF_ERROR(limits.ChargeCopyOf(args[0].items()));
      *out = Value::List(args[0].items());
      return absl::OkStatus();
    }
  } else if (m == "builtins" && (n == "bytes" || n == "bytearray")) {
    if (args.empty()) {
      *out = Value::Bytes("");
      return absl::OkStatus();
    }
    if (args.size() == 1 && args[0].is_bytes()) {
      *out = args[0];
      return absl::OkStatus();
    }
    if (args.size() == 2 && args[0].is_string() && args[1].is_string() &&
        (args[1].as_string() == "latin1" || args[1].as_string() == "latin-1")) {
      if (std::optional<std::string> b = Utf8ToLatin1(args[0].as_string())) {
        *out = Value::Bytes(std::move(*b));
        return absl::OkStatus();
      }
    }
  } else if (m == "_codecs" && n == "encode") {
    // Protocol 2's form of bytes: _codecs.encode(latin-1 text, 'latin1').
    if (args.size() == 2 && args[0].is_string() && args[1].is_string() &&
        (args[1].as_string() == "latin1" || args[1].as_string() == "latin-1")) {
      std::optional<std::string> b = Utf8ToLatin1(args[0].as_string());
      if (!b) return Malformed(g, "text is not Latin-1");
      *out = Value::Bytes(std::move(*b));
      return absl::OkStatus();
    }
  }
  Object o;
  o.callable = g;
  o.args = std::make_shared<std::vector<Value>>(std::move(args));
  o.newobj = newobj;
  *out = Value(std::move(o));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Value> CallGlobal(const Value& callable, std::vector<Value> args, bool newobj,
                                 InputLimits& limits) {
  Value out;
  FABRIC_RETURN_IF_ERROR(Call(callable, std::move(args), newobj, limits, &out));
  return out;
}

}  // namespace fabric::pickle
