#include "checkpoint/pickle.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fabric {
namespace pickle {
namespace {

// Opcodes, as named in CPython's Lib/pickle.py.
enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F',
  INT = 'I', BININT = 'J', BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N',
  PERSID = 'P', BINPERSID = 'Q', REDUCE = 'R', STRING = 'S', BINSTRING = 'T',
  SHORT_BINSTRING = 'U', UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a',
  BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}', APPENDS = 'e',
  GET = 'g', BINGET = 'h', INST = 'i', LONG_BINGET = 'j', LIST = 'l',
  EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  // Protocol 2.
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84,
  TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89,
  LONG1 = 0x8a, LONG4 = 0x8b,
  // Protocol 3.
  BINBYTES = 'B', SHORT_BINBYTES = 'C',
  // Protocol 4.
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f,
  ADDITEMS = 0x90, FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93,
  MEMOIZE = 0x94, FRAME = 0x95,
  // Protocol 5.
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

constexpr size_t kBatchSize = 1000;  // as Python's pickler batches APPENDS/SETITEMS

// Debian's Abseil is built with its own string_view, not std::string_view.
absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsPersistentId(const Value& v) {
  return v.is_object() && v.as_object().callable == PersistentIdCallable();
}

// ===========================================================================
// Writer

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
    absl::Status s = Write(v, 0);
    if (!s.ok()) return s;
    Put(STOP);
    return absl::OkStatus();
  }

 private:
  void Put(uint8_t c) { out_->push_back(static_cast<char>(c)); }
  void PutLE(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) Put(static_cast<uint8_t>(v >> (8 * i)));
  }

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
    absl::Status s = write();
    if (!s.ok()) return s;
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
      absl::Status s = Write(item, depth + 1);
      if (!s.ok()) return s;
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
        absl::Status s = Write(items[i], depth + 1);
        if (!s.ok()) return s;
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
        absl::Status s = Write(items[i].first, depth + 1);
        if (s.ok()) s = Write(items[i].second, depth + 1);
        if (!s.ok()) return s;
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
    absl::Status s =
        WriteGlobal(Global{"torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2"});
    if (!s.ok()) return s;
    Put(MARK);
    Put(MARK);
    if (s = WriteMemoizedString("storage"); !s.ok()) return s;
    if (s = WriteGlobal(v3 ? Global{"torch.storage", "UntypedStorage"}
                           : Global{"torch", *storage_class});
        !s.ok()) {
      return s;
    }
    if (s = WriteString(key); !s.ok()) return s;
    if (s = WriteMemoizedString(location); !s.ok()) return s;
    WriteInt(pid_numel);
    Put(TUPLE);
    Put(BINPERSID);
    WriteInt(storage_offset);
    WriteIntTuple(sizes);
    WriteIntTuple(strides);
    Put(requires_grad ? NEWTRUE : NEWFALSE);
    if (s = WriteGlobal(Global{"collections", "OrderedDict"}); !s.ok()) return s;
    Put(EMPTY_TUPLE);
    Put(REDUCE);
    if (v3) {
      if (s = WriteGlobal(Global{"torch", *dtype_name}); !s.ok()) return s;
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
    absl::StatusOr<StorageId> id = options_.storage_id(t);
    if (!id.ok()) return id.status();
    return WriteTensorRebuild(id->key, id->location, id->storage_numel, t.scalar_type(),
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
    absl::Status s;
    if (o.callable == PersistentIdCallable()) {
      if (args.size() != 1) {
        return absl::InvalidArgumentError("Pickle: a persistent id object needs one arg");
      }
      if (s = Write(args[0], depth + 1); !s.ok()) return s;
      Put(BINPERSID);
      return absl::OkStatus();
    }
    if (s = WriteGlobal(o.callable); !s.ok()) return s;
    if (s = WriteTuple(args, depth); !s.ok()) return s;
    Put(o.newobj ? NEWOBJ : REDUCE);
    if (o.list_items) {
      if (s = WriteAppends(*o.list_items, depth); !s.ok()) return s;
    }
    if (o.dict_items) {
      if (s = WriteSetItems(*o.dict_items, depth); !s.ok()) return s;
    }
    if (o.state) {
      if (s = Write(*o.state, depth + 1); !s.ok()) return s;
      Put(BUILD);
    }
    return absl::OkStatus();
  }

  const PickleOptions& options_;
  std::string* out_;
  std::unordered_map<std::string, uint32_t> memo_;
};

// ===========================================================================
// Reader

// Appends code point `cp` as UTF-8.
void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

// UTF-8 -> Latin-1 bytes (as Python's str.encode('latin1')); nullopt if a
// code point is above 0xff or the UTF-8 is malformed.
std::optional<std::string> Utf8ToLatin1(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if ((c & 0xe0) == 0xc0 && i + 1 < s.size() &&
               (static_cast<uint8_t>(s[i + 1]) & 0xc0) == 0x80) {
      const uint32_t cp = ((c & 0x1fu) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3fu);
      if (cp > 0xff) return std::nullopt;
      out.push_back(static_cast<char>(cp));
      ++i;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

bool HexDigit(char c, uint32_t* v) {
  if (c >= '0' && c <= '9') *v = static_cast<uint32_t>(c - '0');
  else if (c >= 'a' && c <= 'f') *v = static_cast<uint32_t>(c - 'a' + 10);
  else if (c >= 'A' && c <= 'F') *v = static_cast<uint32_t>(c - 'A' + 10);
  else return false;
  return true;
}

bool ParseHex(std::string_view s, uint32_t* v) {
  *v = 0;
  for (char c : s) {
    uint32_t d;
    if (!HexDigit(c, &d)) return false;
    *v = *v * 16 + d;
  }
  return true;
}

// Normalizes Python 2 module names as Python 3's unpickler does (fix_imports).
std::string FixModule(std::string module) {
  if (module == "__builtin__") return "builtins";
  if (module == "copy_reg") return "copyreg";
  return module;
}

bool IntSequence(const Value& v, std::vector<int64_t>* out) {
  if (!v.is_sequence()) return false;
  out->clear();
  for (const Value& item : v.items()) {
    if (!item.is_int()) return false;
    out->push_back(item.as_int());
  }
  return true;
}

class Reader {
 public:
  Reader(std::string_view data, std::string_view what, const UnpickleOptions& options)
      : data_(data), what_(what), options_(options) {}

  absl::StatusOr<Value> Run() {
    while (true) {
      op_pos_ = pos_;
      if (pos_ >= data_.size()) return Error("truncated data: no STOP opcode");
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      if (op == STOP) {
        Value result;
        if (absl::Status s = Pop(&result); !s.ok()) return s;
        if (absl::Status s = CheckDepth(result); !s.ok()) return s;
        return result;
      }
      if (absl::Status s = Step(op); !s.ok()) return s;
    }
  }

 private:
  // ---- errors and input ---------------------------------------------------

  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(
        what_, ": bad pickle: ", message, " (opcode at byte ", op_pos_, ")"));
  }

  absl::Status Truncated() const { return Error("truncated data"); }

  absl::Status Take(uint64_t n, std::string_view* out) {
    if (n > data_.size() - pos_) return Truncated();
    *out = data_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return absl::OkStatus();
  }

  absl::Status ReadLE(int n, uint64_t* out) {
    std::string_view b;
    if (absl::Status s = Take(static_cast<uint64_t>(n), &b); !s.ok()) return s;
    *out = 0;
    for (int i = n - 1; i >= 0; --i) *out = (*out << 8) | static_cast<uint8_t>(b[i]);
    return absl::OkStatus();
  }

  // A text argument up to (not including) the next newline.
  absl::Status Line(std::string_view* out) {
    const size_t nl = data_.find('\n', pos_);
    if (nl == std::string_view::npos) return Truncated();
    *out = data_.substr(pos_, nl - pos_);
    pos_ = nl + 1;
    return absl::OkStatus();
  }

  // ---- stack ----------------------------------------------------------------

  // Items below the innermost MARK are out of reach until it is popped, as in
  // Python's unpickler.
  size_t Base() const { return marks_.empty() ? 0 : marks_.back(); }

  absl::Status Pop(Value* out) {
    if (stack_.size() <= Base()) return Error("stack underflow");
    *out = std::move(stack_.back());
    stack_.pop_back();
    return absl::OkStatus();
  }

  absl::Status Top(Value** out) {
    if (stack_.size() <= Base()) return Error("stack underflow");
    *out = &stack_.back();
    return absl::OkStatus();
  }

  absl::Status PopMark(std::vector<Value>* items) {
    if (marks_.empty()) return Error("no MARK on the stack");
    const size_t mark = marks_.back();
    marks_.pop_back();
    items->assign(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(mark)),
                  std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return absl::OkStatus();
  }

  void Push(Value v) { stack_.push_back(std::move(v)); }

  absl::Status MemoGet(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Error(absl::StrCat("memo key ", index, " is not defined"));
    Push(it->second);
    return absl::OkStatus();
  }

  absl::Status MemoPut(uint64_t index) {
    Value* top = nullptr;
    if (absl::Status s = Top(&top); !s.ok()) return s;
    memo_[index] = *top;
    return absl::OkStatus();
  }

  // ---- numbers from text ----------------------------------------------------

  absl::Status ParseIntLine(std::string_view line, bool is_long, Value* out) {
    if (is_long && !line.empty() && line.back() == 'L') line.remove_suffix(1);
    if (!is_long && line == "00") {
      *out = Value(false);
      return absl::OkStatus();
    }
    if (!is_long && line == "01") {
      *out = Value(true);
      return absl::OkStatus();
    }
    int64_t v;
    if (!absl::SimpleAtoi(ToAbsl(line), &v)) {
      return Error(absl::StrCat("integer '", ToAbsl(line.substr(0, 40)),
                                "' is malformed or does not fit in 64 bits"));
    }
    *out = Value(v);
    return absl::OkStatus();
  }

  absl::Status ParseMemoIndex(std::string_view line, uint64_t* index) {
    if (!absl::SimpleAtoi(ToAbsl(line), index)) return Error("bad memo index");
    return absl::OkStatus();
  }

  // LONG1/LONG4: little-endian two's complement that must fit in int64.
  absl::Status ReadLong(uint64_t n, Value* out) {
    std::string_view b;
    if (absl::Status s = Take(n, &b); !s.ok()) return s;
    if (n == 0) {
      *out = Value(int64_t{0});
      return absl::OkStatus();
    }
    const bool negative = static_cast<uint8_t>(b[n - 1]) & 0x80;
    const uint8_t fill = negative ? 0xff : 0x00;
    for (size_t i = 8; i < n; ++i) {
      if (static_cast<uint8_t>(b[i]) != fill) return Error("integer does not fit in 64 bits");
    }
    if (n > 8 && ((static_cast<uint8_t>(b[7]) & 0x80) != 0) != negative) {
      return Error("integer does not fit in 64 bits");
    }
    uint64_t u = negative ? ~uint64_t{0} : 0;
    const size_t used = std::min<uint64_t>(n, 8);
    for (size_t i = 0; i < used; ++i) {
      u &= ~(uint64_t{0xff} << (8 * i));
      u |= uint64_t{static_cast<uint8_t>(b[i])} << (8 * i);
    }
    *out = Value(static_cast<int64_t>(u));
    return absl::OkStatus();
  }

  // ---- text strings (protocol 0) --------------------------------------------

  // STRING's argument: a quoted Python 2 str literal.
  absl::Status DecodeQuoted(std::string_view line, std::string* out) {
    if (line.size() < 2 || (line.front() != '\'' && line.front() != '"') ||
        line.back() != line.front()) {
      return Error("STRING argument is not quoted");
    }
    line = line.substr(1, line.size() - 2);
    out->clear();
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] != '\\') {
        out->push_back(line[i]);
        continue;
      }
      if (++i >= line.size()) return Error("bad escape in STRING");
      const char c = line[i];
      switch (c) {
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'a': out->push_back('\a'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'v': out->push_back('\v'); break;
        case '\\': case '\'': case '"': out->push_back(c); break;
        case 'x': {
          uint32_t v;
          if (line.size() - i < 3 || !ParseHex(line.substr(i + 1, 2), &v)) {
            return Error("bad \\x escape in STRING");
          }
          out->push_back(static_cast<char>(v));
          i += 2;
          break;
        }
        default:
          if (c >= '0' && c <= '7') {
            uint32_t v = 0;
            size_t k = 0;
            while (k < 3 && i + k < line.size() && line[i + k] >= '0' && line[i + k] <= '7') {
              v = v * 8 + static_cast<uint32_t>(line[i + k] - '0');
              ++k;
            }
            out->push_back(static_cast<char>(v & 0xff));
            i += k - 1;
          } else {
            out->push_back('\\');
            out->push_back(c);
          }
      }
    }
    return absl::OkStatus();
  }

  // UNICODE's argument: raw-unicode-escape (Latin-1 plus \uXXXX, \UXXXXXXXX).
  absl::Status DecodeRawUnicode(std::string_view line, std::string* out) {
    out->clear();
    for (size_t i = 0; i < line.size(); ++i) {
      const char c = line[i];
      if (c == '\\' && i + 1 < line.size() && (line[i + 1] == 'u' || line[i + 1] == 'U')) {
        const size_t digits = line[i + 1] == 'u' ? 4 : 8;
        uint32_t cp;
        if (line.size() - i - 2 < digits || !ParseHex(line.substr(i + 2, digits), &cp) ||
            cp > 0x10ffff) {
          return Error("bad \\u escape in UNICODE");
        }
        AppendUtf8(cp, out);
        i += 1 + digits;
      } else {
        AppendUtf8(static_cast<uint8_t>(c), out);
      }
    }
    return absl::OkStatus();
  }

  // ---- calls ------------------------------------------------------------------

  absl::Status Malformed(const Global& g, absl::string_view why) const {
    return Error(absl::StrCat("malformed ", g.ToString(), " call: ", why));
  }

  // The TensorRef of torch._utils._rebuild_tensor{,_v2,_v3}(storage, offset,
  // size, stride[, requires_grad, hooks[, dtype]][, metadata]).
  absl::Status RebuildTensor(const Global& g, int version, const std::vector<Value>& args,
                             Value* out) {
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
    if (ref.sizes.size() != ref.strides.size()) {
      return Malformed(g, "size and stride differ in length");
    }
    if (version >= 2) {
      if (!args[4].is_bool()) return Malformed(g, "requires_grad is not a bool");
      ref.requires_grad = args[4].as_bool();
    }
    // The view must lie inside its storage, so that reading it later is safe.
    bool empty = false;
    for (size_t i = 0; i < ref.sizes.size(); ++i) {
      if (ref.sizes[i] < 0 || ref.strides[i] < 0) return Malformed(g, "negative size or stride");
      if (ref.sizes[i] == 0) empty = true;
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
  absl::Status Call(const Value& callable, std::vector<Value> args, bool newobj, Value* out,
                    int nesting = 0) {
    if (!callable.is_global()) {
      return Error(absl::StrCat("cannot call a ", callable.kind_name(), " (only named globals)"));
    }
    const Global& g = callable.as_global();
    const std::string& m = g.module;
    const std::string& n = g.name;
    if (m == "torch._utils") {
      if (n == "_rebuild_tensor") return RebuildTensor(g, 1, args, out);
      if (n == "_rebuild_tensor_v2") return RebuildTensor(g, 2, args, out);
      if (n == "_rebuild_tensor_v3") return RebuildTensor(g, 3, args, out);
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
      return Call(args[0], args[2].items(), false, out, nesting + 1);
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
          d.Set(pair.items()[0], pair.items()[1]);
        }
        *out = Value(std::move(d));
        return absl::OkStatus();
      }
    } else if (m == "torch" && n == "Size") {
      if (args.size() == 1 && args[0].is_sequence()) {
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

  // ---- containers -------------------------------------------------------------

  absl::Status Append(Value* target, std::vector<Value> items) {
    if (target->is_list()) {
      std::vector<Value>& list = target->items();
      for (Value& v : items) list.push_back(std::move(v));
      return absl::OkStatus();
    }
    if (target->is_object()) {
      Object& o = target->as_object();
      if (!o.list_items) o.list_items = std::make_shared<std::vector<Value>>();
      for (Value& v : items) o.list_items->push_back(std::move(v));
      return absl::OkStatus();
    }
    return Error(absl::StrCat("cannot append to a ", target->kind_name()));
  }

  absl::Status SetItems(Value* target, std::vector<Value> kv) {
    if (kv.size() % 2 != 0) return Error("odd number of items for SETITEMS");
    if (target->is_dict()) {
      Dict& d = target->as_dict();
      for (size_t i = 0; i < kv.size(); i += 2) d.Set(std::move(kv[i]), std::move(kv[i + 1]));
      return absl::OkStatus();
    }
    if (target->is_object()) {
      Object& o = target->as_object();
      if (!o.dict_items) o.dict_items = std::make_shared<std::vector<std::pair<Value, Value>>>();
      for (size_t i = 0; i < kv.size(); i += 2) {
        o.dict_items->emplace_back(std::move(kv[i]), std::move(kv[i + 1]));
      }
      return absl::OkStatus();
    }
    return Error(absl::StrCat("cannot set items on a ", target->kind_name()));
  }

  absl::Status MakeTuple(size_t n) {
    if (stack_.size() - Base() < n) return Error("stack underflow");
    std::vector<Value> items(std::make_move_iterator(stack_.end() - static_cast<std::ptrdiff_t>(n)),
                             std::make_move_iterator(stack_.end()));
    stack_.resize(stack_.size() - n);
    Push(Value::Tuple(std::move(items)));
    return absl::OkStatus();
  }

  absl::Status PushString(std::string_view s) {
    Push(Value(std::string(s)));
    return absl::OkStatus();
  }

  absl::Status PushGlobal(std::string module, std::string name) {
    Push(Value(Global{FixModule(std::move(module)), std::move(name)}));
    return absl::OkStatus();
  }

  absl::Status PushPersistentId(Value pid) {
    Object o;
    o.callable = PersistentIdCallable();
    o.args->push_back(std::move(pid));
    Push(Value(std::move(o)));
    return absl::OkStatus();
  }

  // ---- one opcode ---------------------------------------------------------------

  absl::Status Step(uint8_t op) {
    absl::Status s;
    uint64_t u = 0;
    std::string_view text;
    switch (op) {
      case PROTO:
        if (s = ReadLE(1, &u); !s.ok()) return s;
        if (u > 5) return Error(absl::StrCat("unsupported pickle protocol ", u));
        return absl::OkStatus();
      case FRAME:
        // Frames only group opcodes for buffered reading; check and go on.
        if (s = ReadLE(8, &u); !s.ok()) return s;
        if (u > data_.size() - pos_) return Truncated();
        return absl::OkStatus();
      case MARK:
        marks_.push_back(stack_.size());
        return absl::OkStatus();
      case POP:
        if (stack_.size() > Base()) {
          stack_.pop_back();
        } else if (!marks_.empty()) {
          marks_.pop_back();  // Python pops the mark when no item is above it
        } else {
          return Error("stack underflow");
        }
        return absl::OkStatus();
      case POP_MARK: {
        std::vector<Value> items;
        return PopMark(&items);
      }
      case DUP: {
        Value* top = nullptr;
        if (s = Top(&top); !s.ok()) return s;
        Push(*top);
        return absl::OkStatus();
      }

      // Scalars.
      case NONE: Push(Value()); return absl::OkStatus();
      case NEWTRUE: Push(Value(true)); return absl::OkStatus();
      case NEWFALSE: Push(Value(false)); return absl::OkStatus();
      case BININT1:
        if (s = ReadLE(1, &u); !s.ok()) return s;
        Push(Value(static_cast<int64_t>(u)));
        return absl::OkStatus();
      case BININT2:
        if (s = ReadLE(2, &u); !s.ok()) return s;
        Push(Value(static_cast<int64_t>(u)));
        return absl::OkStatus();
      case BININT:
        if (s = ReadLE(4, &u); !s.ok()) return s;
        Push(Value(static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(u)))));
        return absl::OkStatus();
      case LONG1: {
        if (s = ReadLE(1, &u); !s.ok()) return s;
        Value v;
        if (s = ReadLong(u, &v); !s.ok()) return s;
        Push(std::move(v));
        return absl::OkStatus();
      }
      case LONG4: {
        if (s = ReadLE(4, &u); !s.ok()) return s;
        if (static_cast<int32_t>(static_cast<uint32_t>(u)) < 0) return Error("negative LONG4 size");
        Value v;
        if (s = ReadLong(u, &v); !s.ok()) return s;
        Push(std::move(v));
        return absl::OkStatus();
      }
      case INT:
      case LONG: {
        if (s = Line(&text); !s.ok()) return s;
        Value v;
        if (s = ParseIntLine(text, op == LONG, &v); !s.ok()) return s;
        Push(std::move(v));
        return absl::OkStatus();
      }
      case BINFLOAT: {
        std::string_view b;
        if (s = Take(8, &b); !s.ok()) return s;
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<uint8_t>(b[i]);
        double d;
        std::memcpy(&d, &bits, sizeof(d));
        Push(Value(d));
        return absl::OkStatus();
      }
      case FLOAT: {
        if (s = Line(&text); !s.ok()) return s;
        const std::string str(text);
        char* end = nullptr;
        const double d = std::strtod(str.c_str(), &end);
        if (str.empty() || end != str.c_str() + str.size()) return Error("malformed FLOAT");
        Push(Value(d));
        return absl::OkStatus();
      }

      // Strings and bytes.
      case SHORT_BINUNICODE:
      case BINUNICODE:
      case BINUNICODE8:
        if (s = ReadLE(op == SHORT_BINUNICODE ? 1 : op == BINUNICODE ? 4 : 8, &u); !s.ok()) {
          return s;
        }
        if (s = Take(u, &text); !s.ok()) return s;
        return PushString(text);
      case SHORT_BINSTRING:
      case BINSTRING:
        if (s = ReadLE(op == SHORT_BINSTRING ? 1 : 4, &u); !s.ok()) return s;
        if (op == BINSTRING && static_cast<int32_t>(static_cast<uint32_t>(u)) < 0) {
          return Error("negative BINSTRING size");
        }
        if (s = Take(u, &text); !s.ok()) return s;
        return PushString(text);  // a Python 2 str: taken as text
      case STRING: {
        if (s = Line(&text); !s.ok()) return s;
        std::string str;
        if (s = DecodeQuoted(text, &str); !s.ok()) return s;
        return PushString(str);
      }
      case UNICODE: {
        if (s = Line(&text); !s.ok()) return s;
        std::string str;
        if (s = DecodeRawUnicode(text, &str); !s.ok()) return s;
        return PushString(str);
      }
      case SHORT_BINBYTES:
      case BINBYTES:
      case BINBYTES8:
      case BYTEARRAY8:
        if (s = ReadLE(op == SHORT_BINBYTES ? 1 : op == BINBYTES ? 4 : 8, &u); !s.ok()) return s;
        if (s = Take(u, &text); !s.ok()) return s;
        Push(Value::Bytes(std::string(text)));
        return absl::OkStatus();

      // Tuples, lists, dicts, sets.
      case EMPTY_TUPLE: Push(Value::Tuple()); return absl::OkStatus();
      case TUPLE1: return MakeTuple(1);
      case TUPLE2: return MakeTuple(2);
      case TUPLE3: return MakeTuple(3);
      case TUPLE: {
        std::vector<Value> items;
        if (s = PopMark(&items); !s.ok()) return s;
        Push(Value::Tuple(std::move(items)));
        return absl::OkStatus();
      }
      case EMPTY_LIST: Push(Value::List()); return absl::OkStatus();
      case LIST:
      case FROZENSET: {  // sets load as lists
        std::vector<Value> items;
        if (s = PopMark(&items); !s.ok()) return s;
        Push(Value::List(std::move(items)));
        return absl::OkStatus();
      }
      case EMPTY_SET: Push(Value::List()); return absl::OkStatus();
      case APPEND: {
        Value item;
        Value* target = nullptr;
        if (s = Pop(&item); !s.ok()) return s;
        if (s = Top(&target); !s.ok()) return s;
        std::vector<Value> items;
        items.push_back(std::move(item));
        return Append(target, std::move(items));
      }
      case APPENDS:
      case ADDITEMS: {
        std::vector<Value> items;
        Value* target = nullptr;
        if (s = PopMark(&items); !s.ok()) return s;
        if (s = Top(&target); !s.ok()) return s;
        return Append(target, std::move(items));
      }
      case EMPTY_DICT: Push(Value::MakeDict()); return absl::OkStatus();
      case DICT: {
        std::vector<Value> kv;
        if (s = PopMark(&kv); !s.ok()) return s;
        Value d = Value::MakeDict();
        if (s = SetItems(&d, std::move(kv)); !s.ok()) return s;
        Push(std::move(d));
        return absl::OkStatus();
      }
      case SETITEM: {
        std::vector<Value> kv(2);
        Value* target = nullptr;
        if (s = Pop(&kv[1]); !s.ok()) return s;
        if (s = Pop(&kv[0]); !s.ok()) return s;
        if (s = Top(&target); !s.ok()) return s;
        return SetItems(target, std::move(kv));
      }
      case SETITEMS: {
        std::vector<Value> kv;
        Value* target = nullptr;
        if (s = PopMark(&kv); !s.ok()) return s;
        if (s = Top(&target); !s.ok()) return s;
        return SetItems(target, std::move(kv));
      }

      // Memo.
      case BINGET:
      case LONG_BINGET:
        if (s = ReadLE(op == BINGET ? 1 : 4, &u); !s.ok()) return s;
        return MemoGet(u);
      case GET:
        if (s = Line(&text); !s.ok()) return s;
        if (s = ParseMemoIndex(text, &u); !s.ok()) return s;
        return MemoGet(u);
      case BINPUT:
      case LONG_BINPUT:
        if (s = ReadLE(op == BINPUT ? 1 : 4, &u); !s.ok()) return s;
        return MemoPut(u);
      case PUT:
        if (s = Line(&text); !s.ok()) return s;
        if (s = ParseMemoIndex(text, &u); !s.ok()) return s;
        return MemoPut(u);
      case MEMOIZE:
        return MemoPut(memo_.size());

      // Globals, calls, objects.
      case GLOBAL: {
        std::string_view module, name;
        if (s = Line(&module); !s.ok()) return s;
        if (s = Line(&name); !s.ok()) return s;
        return PushGlobal(std::string(module), std::string(name));
      }
      case STACK_GLOBAL: {
        Value module, name;
        if (s = Pop(&name); !s.ok()) return s;
        if (s = Pop(&module); !s.ok()) return s;
        if (!module.is_string() || !name.is_string()) {
          return Error("STACK_GLOBAL needs two strings");
        }
        return PushGlobal(module.as_string(), name.as_string());
      }
      case REDUCE:
      case NEWOBJ: {
        Value args, callable, result;
        if (s = Pop(&args); !s.ok()) return s;
        if (s = Pop(&callable); !s.ok()) return s;
        if (!args.is_tuple()) return Error("call arguments are not a tuple");
        if (s = Call(callable, args.items(), op == NEWOBJ, &result); !s.ok()) return s;
        Push(std::move(result));
        return absl::OkStatus();
      }
      case NEWOBJ_EX: {
        Value kwargs, args, cls, result;
        if (s = Pop(&kwargs); !s.ok()) return s;
        if (s = Pop(&args); !s.ok()) return s;
        if (s = Pop(&cls); !s.ok()) return s;
        if (!args.is_tuple() || !kwargs.is_dict()) return Error("malformed NEWOBJ_EX");
        if (!kwargs.as_dict().empty()) return Error("NEWOBJ_EX with keyword arguments");
        if (s = Call(cls, args.items(), true, &result); !s.ok()) return s;
        Push(std::move(result));
        return absl::OkStatus();
      }
      case INST: {
        std::string_view module, name;
        if (s = Line(&module); !s.ok()) return s;
        if (s = Line(&name); !s.ok()) return s;
        std::vector<Value> args;
        if (s = PopMark(&args); !s.ok()) return s;
        Value result;
        const Value cls(Global{FixModule(std::string(module)), std::string(name)});
        if (s = Call(cls, std::move(args), false, &result); !s.ok()) return s;
        Push(std::move(result));
        return absl::OkStatus();
      }
      case OBJ: {
        std::vector<Value> items;
        if (s = PopMark(&items); !s.ok()) return s;
        if (items.empty()) return Error("OBJ without a class");
        const Value cls = items[0];
        items.erase(items.begin());
        Value result;
        if (s = Call(cls, std::move(items), false, &result); !s.ok()) return s;
        Push(std::move(result));
        return absl::OkStatus();
      }
      case BUILD: {
        Value state;
        Value* target = nullptr;
        if (s = Pop(&state); !s.ok()) return s;
        if (s = Top(&target); !s.ok()) return s;
        // Objects keep their state; for what we interpret (OrderedDict's
        // _metadata, a tensor subclass's attributes) it is dropped.
        if (target->is_object()) target->as_object().state = std::make_shared<Value>(std::move(state));
        return absl::OkStatus();
      }
      case BINPERSID: {
        Value pid;
        if (s = Pop(&pid); !s.ok()) return s;
        return PushPersistentId(std::move(pid));
      }
      case PERSID:
        if (s = Line(&text); !s.ok()) return s;
        return PushPersistentId(Value(std::string(text)));

      case EXT1:
      case EXT2:
      case EXT4:
        return Error("extension registry opcodes (EXT1/2/4) are not supported");
      case NEXT_BUFFER:
        return Error("out-of-band buffers (NEXT_BUFFER) are not supported");
      case READONLY_BUFFER:
        return absl::OkStatus();
      default:
        return Error(absl::StrFormat("unknown opcode 0x%02x", op));
    }
  }

  // ---- result checks ------------------------------------------------------------

  // Height of `v` (0 for leaves), failing beyond max_depth or on a cycle, so
  // that every recursive walk of the result is bounded. Shared subtrees are
  // measured once.
  absl::Status Height(const Value& v, int depth, int* height) {
    *height = 0;
    const void* key = nullptr;
    if (v.is_sequence()) key = &v.items();
    else if (v.is_dict()) key = &v.as_dict();
    else if (v.is_object()) key = &v.as_object();
    else return absl::OkStatus();
    if (depth > options_.max_depth) return TooDeep();
    auto [it, inserted] = heights_.emplace(key, -1);
    if (!inserted) {
      if (it->second < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(what_, ": bad pickle: the result contains a reference cycle"));
      }
      if (depth + it->second > options_.max_depth) return TooDeep();
      *height = it->second;
      return absl::OkStatus();
    }
    int h = 0;
    auto visit = [&](const Value& child) {
      int ch;
      absl::Status s = Height(child, depth + 1, &ch);
      h = std::max(h, ch + 1);
      return s;
    };
    absl::Status s;
    if (v.is_sequence()) {
      for (const Value& c : v.items()) {
        if (s = visit(c); !s.ok()) return s;
      }
    } else if (v.is_dict()) {
      for (const auto& [k, val] : v.as_dict()) {
        if (s = visit(k); !s.ok()) return s;
        if (s = visit(val); !s.ok()) return s;
      }
    } else {
      const Object& o = v.as_object();
      if (o.args) {
        for (const Value& c : *o.args) {
          if (s = visit(c); !s.ok()) return s;
        }
      }
      if (o.list_items) {
        for (const Value& c : *o.list_items) {
          if (s = visit(c); !s.ok()) return s;
        }
      }
      if (o.dict_items) {
        for (const auto& [k, val] : *o.dict_items) {
          if (s = visit(k); !s.ok()) return s;
          if (s = visit(val); !s.ok()) return s;
        }
      }
      if (o.state) {
        if (s = visit(*o.state); !s.ok()) return s;
      }
    }
    heights_[key] = h;
    *height = h;
    return absl::OkStatus();
  }

  absl::Status TooDeep() const {
    return absl::InvalidArgumentError(absl::StrCat(
        what_, ": bad pickle: the result is nested deeper than ", options_.max_depth,
        " levels"));
  }

  absl::Status CheckDepth(const Value& v) {
    int h;
    return Height(v, 0, &h);
  }

  std::string_view data_;
  std::string what_;
  const UnpickleOptions& options_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  absl::flat_hash_map<uint64_t, Value> memo_;
  absl::flat_hash_map<const void*, int> heights_;
};

}  // namespace

absl::Status PickleTo(const Value& v, const PickleOptions& options, std::string* out) {
  return Writer(options, out).Run(v);
}

absl::StatusOr<std::string> Pickle(const Value& v, const PickleOptions& options) {
  std::string out;
  absl::Status s = PickleTo(v, options, &out);
  if (!s.ok()) return s;
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

absl::StatusOr<Value> Unpickle(std::string_view bytes, std::string_view what,
                               const UnpickleOptions& options) {
  return Reader(bytes, what, options).Run();
}

}  // namespace pickle
}  // namespace fabric
