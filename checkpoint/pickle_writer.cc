#include "checkpoint/pickle_writer.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/little_endian.h"
#include "checkpoint/pickle_format.h"

namespace fabric::pickle {
namespace {

constexpr size_t kBatchSize = 1000;  // as Python's pickler batches APPENDS/SETITEMS

class Writer {
 public:
  Writer(const PickleOptions& options, std::string* out) : options_(options), out_(out) {}

  absl::Status Run(const Value& v) {
    if (options_.protocol < 2 || options_.protocol > 5) {
      return absl::InvalidArgumentError(
          absl::StrCat("Pickle: protocol ", options_.protocol, " is not supported (2 to 5)"));
    }
    Put(PROTO);
    Put(static_cast<uint8_t>(options_.protocol));
    FABRIC_RETURN_IF_ERROR(Write(v, 0));
    Put(STOP);
    return absl::OkStatus();
  }

 private:
  void Put(uint8_t c) { out_->push_back(static_cast<char>(c)); }
  void PutLE(uint64_t v, int n) { little_endian::Append(out_, v, static_cast<size_t>(n)); }

  void WriteInt(int64_t v) {
    if (v >= 0 && v <= 0xff) {
      Put(BININT1);
      PutLE(static_cast<uint64_t>(v), 1);
    } else if (v >= 0 && v <= 0xffff) {
      Put(BININT2);
      PutLE(static_cast<uint64_t>(v), 2);
    } else if (v >= std::numeric_limits<int32_t>::min() &&
               v <= std::numeric_limits<int32_t>::max()) {
      Put(BININT);
      PutLE(static_cast<uint32_t>(static_cast<int32_t>(v)), 4);
    } else {
      // LONG1: the shortest little-endian two's complement, as Python writes.
      uint8_t bytes[8];
      const uint64_t u = static_cast<uint64_t>(v);
      for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(u >> (8 * i));
      int n = 8;
      while (n > 1 && ((bytes[n - 1] == 0x00 && !(bytes[n - 2] & 0x80)) ||
                       (bytes[n - 1] == 0xff && (bytes[n - 2] & 0x80)))) {
        --n;
      }
      Put(LONG1);
      Put(static_cast<uint8_t>(n));
      for (int i = 0; i < n; ++i) Put(bytes[i]);
    }
  }

  void WriteFloat(double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, sizeof(bits));
    Put(BINFLOAT);
    for (int i = 7; i >= 0; --i) Put(static_cast<uint8_t>(bits >> (8 * i)));
  }

  absl::Status WriteString(std::string_view s) {
    if (options_.protocol >= 4 && s.size() < 256) {
      Put(SHORT_BINUNICODE);
      PutLE(s.size(), 1);
    } else if (s.size() <= 0xffffffffu) {
      Put(BINUNICODE);
      PutLE(s.size(), 4);
    } else if (options_.protocol >= 4) {
      Put(BINUNICODE8);
      PutLE(s.size(), 8);
    } else {
      return absl::InvalidArgumentError("Pickle: a string of 4 GiB or more needs protocol 4");
    }
    out_->append(s.data(), s.size());
    return absl::OkStatus();
  }

  absl::Status WriteBytes(std::string_view s) {
    if (s.size() < 256) {
      Put(SHORT_BINBYTES);
      PutLE(s.size(), 1);
    } else if (s.size() <= 0xffffffffu) {
      Put(BINBYTES);
      PutLE(s.size(), 4);
    } else if (options_.protocol >= 4) {
      Put(BINBYTES8);
      PutLE(s.size(), 8);
    } else {
      return absl::InvalidArgumentError("Pickle: bytes of 4 GiB or more need protocol 4");
    }
    out_->append(s.data(), s.size());
    return absl::OkStatus();
  }

  // Writes the value once and memoizes it; later uses are a memo GET, as
  // torch.save's pickler does for its repeated globals and strings.
  template <typename WriteFn>
  absl::Status Memoized(const std::string& memo_key, WriteFn write) {
    auto it = memo_.find(memo_key);
    if (it != memo_.end()) {
      if (it->second < 256) {
        Put(BINGET);
        PutLE(it->second, 1);
      } else {
        Put(LONG_BINGET);
        PutLE(it->second, 4);
      }
      return absl::OkStatus();
    }
    FABRIC_RETURN_IF_ERROR(write());
    const uint32_t index = static_cast<uint32_t>(memo_.size());
    memo_.emplace(memo_key, index);
    if (index < 256) {
      Put(BINPUT);
      PutLE(index, 1);
    } else {
      Put(LONG_BINPUT);
      PutLE(index, 4);
    }
    return absl::OkStatus();
  }

  absl::Status WriteGlobal(const Global& g) {
    if (g.module.empty() || g.name.empty() || g.module.find('\n') != std::string::npos ||
        g.name.find('\n') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("Pickle: invalid global name '", g.module, "' '", g.name, "'"));
    }
    return Memoized(absl::StrCat("g", g.module, "\n", g.name), [&] {
      Put(GLOBAL);
      absl::StrAppend(out_, g.module, "\n", g.name, "\n");
      return absl::OkStatus();
    });
  }

  absl::Status WriteMemoizedString(const std::string& s) {
    return Memoized(absl::StrCat("s", s), [&] { return WriteString(s); });
  }

  void WriteIntTuple(c10::IntArrayRef values) {
    const size_t n = values.size();
    if (n == 0) {
      Put(EMPTY_TUPLE);
      return;
    }
    if (n > 3) Put(MARK);
    for (int64_t v : values) WriteInt(v);
    Put(n == 1 ? TUPLE1 : n == 2 ? TUPLE2 : n == 3 ? TUPLE3 : TUPLE);
  }

  absl::Status WriteTuple(const std::vector<Value>& items, int depth) {
    const size_t n = items.size();
    if (n == 0) {
      Put(EMPTY_TUPLE);
      return absl::OkStatus();
    }
    if (n > 3) Put(MARK);
    for (const Value& item : items) {
      FABRIC_RETURN_IF_ERROR(Write(item, depth + 1));
    }
    Put(n == 1 ? TUPLE1 : n == 2 ? TUPLE2 : n == 3 ? TUPLE3 : TUPLE);
    return absl::OkStatus();
  }

  // APPEND/APPENDS onto the list-like object on top of the stack.
  absl::Status WriteAppends(const std::vector<Value>& items, int depth) {
    for (size_t begin = 0; begin < items.size(); begin += kBatchSize) {
      const size_t end = std::min(items.size(), begin + kBatchSize);
      if (end - begin > 1) Put(MARK);
      for (size_t i = begin; i < end; ++i) {
        FABRIC_RETURN_IF_ERROR(Write(items[i], depth + 1));
      }
      Put(end - begin > 1 ? APPENDS : APPEND);
    }
    return absl::OkStatus();
  }

  // SETITEM/SETITEMS onto the dict-like object on top of the stack.
  absl::Status WriteSetItems(const std::vector<std::pair<Value, Value>>& items, int depth) {
    for (size_t begin = 0; begin < items.size(); begin += kBatchSize) {
      const size_t end = std::min(items.size(), begin + kBatchSize);
      if (end - begin > 1) Put(MARK);
      for (size_t i = begin; i < end; ++i) {
        FABRIC_RETURN_IF_ERROR(Write(items[i].first, depth + 1));
        FABRIC_RETURN_IF_ERROR(Write(items[i].second, depth + 1));
      }
      Put(end - begin > 1 ? SETITEMS : SETITEM);
    }
    return absl::OkStatus();
  }

  // torch._utils._rebuild_tensor_v2(persistent storage id, offset, size,
  // stride, requires_grad, OrderedDict()), or _v3 with an untyped storage and
  // the dtype for dtypes that have no legacy storage class.
  absl::Status WriteTensorRebuild(const std::string& key, const std::string& location,
                                  int64_t storage_numel, at::ScalarType dtype,
                                  int64_t storage_offset, c10::IntArrayRef sizes,
                                  c10::IntArrayRef strides, bool requires_grad) {
    if (sizes.size() != strides.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Pickle: tensor of storage '", key, "' has ", sizes.size(), " sizes but ",
          strides.size(), " strides"));
    }
    const std::optional<std::string> storage_class = StorageClassName(dtype);
    const std::optional<std::string> dtype_name = DtypeName(dtype);
    const bool v3 = !storage_class.has_value();
    if (v3 && !dtype_name.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Pickle: tensors of dtype ", c10::toString(dtype), " cannot be saved"));
    }
    int64_t pid_numel = storage_numel;
    if (v3) {  // an UntypedStorage is sized in bytes
      const int64_t item = static_cast<int64_t>(c10::elementSize(dtype));
      if (storage_numel < 0 || storage_numel > std::numeric_limits<int64_t>::max() / item) {
        return absl::InvalidArgumentError(
            absl::StrCat("Pickle: bad storage size ", storage_numel, " for storage '", key, "'"));
      }
      pid_numel = storage_numel * item;
    }
    FABRIC_RETURN_IF_ERROR(
        WriteGlobal(Global{"torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2"}));
    Put(MARK);
    Put(MARK);
    FABRIC_RETURN_IF_ERROR(WriteMemoizedString("storage"));
    FABRIC_RETURN_IF_ERROR(WriteGlobal(v3 ? Global{"torch.storage", "UntypedStorage"}
                                          : Global{"torch", *storage_class}));
    FABRIC_RETURN_IF_ERROR(WriteString(key));
    FABRIC_RETURN_IF_ERROR(WriteMemoizedString(location));
    WriteInt(pid_numel);
    Put(TUPLE);
    Put(BINPERSID);
    WriteInt(storage_offset);
    WriteIntTuple(sizes);
    WriteIntTuple(strides);
    Put(requires_grad ? NEWTRUE : NEWFALSE);
    FABRIC_RETURN_IF_ERROR(WriteGlobal(Global{"collections", "OrderedDict"}));
    Put(EMPTY_TUPLE);
    Put(REDUCE);
    if (v3) {
      FABRIC_RETURN_IF_ERROR(WriteGlobal(Global{"torch", *dtype_name}));
    }
    Put(TUPLE);
    Put(REDUCE);
    return absl::OkStatus();
  }

  absl::Status WriteTensor(const at::Tensor& t) {
    if (!options_.storage_id) {
      return absl::FailedPreconditionError(
          "Pickle: the value holds a tensor but PickleOptions::storage_id is not set");
    }
    if (!t.defined()) return absl::InvalidArgumentError("Pickle: undefined tensor");
    if (t.layout() != at::kStrided) {
      return absl::UnimplementedError("Pickle: only strided (dense) tensors can be saved");
    }
    if (t.is_quantized()) return absl::UnimplementedError("Pickle: quantized tensors");
    if (t.is_conj() || t.is_neg()) {
      return absl::UnimplementedError(
          "Pickle: tensors with a conjugate or negative bit; resolve_conj()/resolve_neg() "
          "first");
    }
    FABRIC_ASSIGN_OR_RETURN(StorageId id, options_.storage_id(t));
    return WriteTensorRebuild(id.key, id.location, id.storage_numel, t.scalar_type(),
                              t.storage_offset(), t.sizes(), t.strides(), t.requires_grad());
  }

  absl::Status Write(const Value& v, int depth) {
    if (depth > options_.max_depth) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Pickle: value nested deeper than ", options_.max_depth, " levels (or cyclic)"));
    }
    using Kind = Value::Kind;
    switch (v.kind()) {
      case Kind::kNone: Put(NONE); return absl::OkStatus();
      case Kind::kBool: Put(v.as_bool() ? NEWTRUE : NEWFALSE); return absl::OkStatus();
      case Kind::kInt: WriteInt(v.as_int()); return absl::OkStatus();
      case Kind::kFloat: WriteFloat(v.as_float()); return absl::OkStatus();
      case Kind::kString: return WriteString(v.as_string());
      case Kind::kBytes: return WriteBytes(v.as_bytes());
      case Kind::kTensor: return WriteTensor(v.as_tensor());
      case Kind::kTensorRef: {
        const TensorRef& r = v.as_tensor_ref();
        return WriteTensorRebuild(r.storage_key, r.location, r.storage_numel, r.dtype,
                                  r.storage_offset, r.sizes, r.strides, r.requires_grad);
      }
      case Kind::kList:
        Put(EMPTY_LIST);
        return WriteAppends(v.items(), depth);
      case Kind::kTuple: return WriteTuple(v.items(), depth);
      case Kind::kDict:
        Put(EMPTY_DICT);
        return WriteSetItems(v.as_dict().items(), depth);
      case Kind::kGlobal: return WriteGlobal(v.as_global());
      case Kind::kObject: return WriteObject(v.as_object(), depth);
    }
    return absl::InternalError("Pickle: unknown value kind");
  }

  absl::Status WriteObject(const Object& o, int depth) {
    static const std::vector<Value> kNoArgs;
    const std::vector<Value>& args = o.args ? *o.args : kNoArgs;
    if (o.callable == PersistentIdCallable()) {
      if (args.size() != 1) {
        return absl::InvalidArgumentError("Pickle: a persistent id object needs one arg");
      }
      FABRIC_RETURN_IF_ERROR(Write(args[0], depth + 1));
      Put(BINPERSID);
      return absl::OkStatus();
    }
    FABRIC_RETURN_IF_ERROR(WriteGlobal(o.callable));
    FABRIC_RETURN_IF_ERROR(WriteTuple(args, depth));
    Put(o.newobj ? NEWOBJ : REDUCE);
    if (o.list_items) {
      FABRIC_RETURN_IF_ERROR(WriteAppends(*o.list_items, depth));
    }
    if (o.dict_items) {
      FABRIC_RETURN_IF_ERROR(WriteSetItems(*o.dict_items, depth));
    }
    if (o.state) {
      FABRIC_RETURN_IF_ERROR(Write(*o.state, depth + 1));
      Put(BUILD);
    }
    return absl::OkStatus();
  }

  const PickleOptions& options_;
  std::string* out_;
  std::unordered_map<std::string, uint32_t> memo_;
};

}  // namespace

absl::Status PickleTo(const Value& v, const PickleOptions& options, std::string* out) {
  return Writer(options, out).Run(v);
}

absl::StatusOr<std::string> Pickle(const Value& v, const PickleOptions& options) {
  std::string out;
  FABRIC_RETURN_IF_ERROR(PickleTo(v, options, &out));
  return out;
}

absl::StatusOr<std::string> Pickle(const Value& v, int protocol) {
  PickleOptions options;
  options.protocol = protocol;
  return Pickle(v, options);
}

absl::StatusOr<std::string> Pickle(const Value& v, StorageIdFn storage_id, int protocol) {
  PickleOptions options;
  options.protocol = protocol;
  options.storage_id = std::move(storage_id);
  return Pickle(v, options);
}

}  // namespace fabric::pickle
