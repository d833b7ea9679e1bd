#include "checkpoint/pickle_reader.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/absl_view.h"
#include "base/status_macros.h"
#include "checkpoint/little_endian.h"
#include "checkpoint/pickle_calls.h"
#include "checkpoint/pickle_limits.h"
#include "checkpoint/pickle_text.h"

namespace fabric::pickle {
namespace {

// Normalizes Python 2 module names as Python 3's unpickler does (fix_imports).
std::string FixModule(std::string module) {
  if (module == "__builtin__") return "builtins";
  if (module == "copy_reg") return "copyreg";
  return module;
}

class Reader {
 public:
  Reader(std::string_view data, std::string_view what, const UnpickleOptions& options)
      : data_(data),
        what_(what),
        options_(options),
        limits_(options.max_expanded_size != 0 ? options.max_expanded_size
                                               : DefaultExpansionLimit(data.size()),
                options.max_key_nodes) {}

  absl::StatusOr<Value> Run() {
    absl::StatusOr<Value> result = Parse();
    ReleaseUnreachable(result.ok() ? &*result : nullptr);
    return result;
  }

 private:
  absl::StatusOr<Value> Parse() {
    while (true) {
      op_pos_ = pos_;
      if (pos_ >= data_.size()) return Error("truncated data: no STOP opcode");
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      if (op == STOP) {
        Value result;
        FABRIC_RETURN_IF_ERROR(Pop(&result));
        FABRIC_RETURN_IF_ERROR(CheckDepth(result));
        return result;
      }
      FABRIC_RETURN_IF_ERROR(Step(op));
    }
  }

  // ---- errors and input ---------------------------------------------------

  // An error of the text or call helpers, located like the reader's own.
  template <typename T>
  absl::StatusOr<T> At(absl::StatusOr<T> result) const {
    if (result.ok()) return result;
    return Error(result.status().message());
  }

  absl::Status At(const absl::Status& s) const { return s.ok() ? s : Error(s.message()); }

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
    FABRIC_RETURN_IF_ERROR(Take(static_cast<uint64_t>(n), &b));
    *out = little_endian::Load(b.data(), static_cast<size_t>(n));
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

  // A second reference to a value already on the stack or in the memo: its
  // strings are copied, and charged (pickle_limits.h).
  absl::Status PushCopy(const Value& v) {
    FABRIC_RETURN_IF_ERROR(At(limits_.ChargeCopyOf(v)));
    Push(v);
    return absl::OkStatus();
  }

  absl::Status MemoGet(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Error(absl::StrCat("memo key ", index, " is not defined"));
    return PushCopy(it->second);
  }

  absl::Status MemoPut(uint64_t index) {
    Value* top = nullptr;
    FABRIC_RETURN_IF_ERROR(Top(&top));
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
    if (!absl::SimpleAtoi(AbslView(line), &v)) {
      return Error(absl::StrCat("integer '", AbslView(line.substr(0, 40)),
                                "' is malformed or does not fit in 64 bits"));
    }
    *out = Value(v);
    return absl::OkStatus();
  }

  absl::Status ParseMemoIndex(std::string_view line, uint64_t* index) {
    if (!absl::SimpleAtoi(AbslView(line), index)) return Error("bad memo index");
    return absl::OkStatus();
  }

  // LONG1/LONG4: little-endian two's complement that must fit in int64.
  absl::Status ReadLong(uint64_t n, Value* out) {
    std::string_view b;
    FABRIC_RETURN_IF_ERROR(Take(n, &b));
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
      for (size_t i = 0; i < kv.size(); i += 2) {
        FABRIC_RETURN_IF_ERROR(At(limits_.CheckDictKey(kv[i])));
        d.Set(std::move(kv[i]), std::move(kv[i + 1]));
      }
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
    uint64_t u = 0;
    std::string_view text;
    switch (op) {
      case PROTO:
        FABRIC_RETURN_IF_ERROR(ReadLE(1, &u));
        if (u > 5) return Error(absl::StrCat("unsupported pickle protocol ", u));
        return absl::OkStatus();
      case FRAME:
        // Frames only group opcodes for buffered reading; check and go on.
        FABRIC_RETURN_IF_ERROR(ReadLE(8, &u));
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
        FABRIC_RETURN_IF_ERROR(Top(&top));
        return PushCopy(*top);
      }

      // Scalars.
      case NONE: Push(Value()); return absl::OkStatus();
      case NEWTRUE: Push(Value(true)); return absl::OkStatus();
      case NEWFALSE: Push(Value(false)); return absl::OkStatus();
      case BININT1:
        FABRIC_RETURN_IF_ERROR(ReadLE(1, &u));
        Push(Value(static_cast<int64_t>(u)));
        return absl::OkStatus();
      case BININT2:
        FABRIC_RETURN_IF_ERROR(ReadLE(2, &u));
        Push(Value(static_cast<int64_t>(u)));
        return absl::OkStatus();
      case BININT:
        FABRIC_RETURN_IF_ERROR(ReadLE(4, &u));
        Push(Value(static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(u)))));
        return absl::OkStatus();
      case LONG1: {
        FABRIC_RETURN_IF_ERROR(ReadLE(1, &u));
        Value v;
        FABRIC_RETURN_IF_ERROR(ReadLong(u, &v));
        Push(std::move(v));
        return absl::OkStatus();
      }
      case LONG4: {
        FABRIC_RETURN_IF_ERROR(ReadLE(4, &u));
        if (static_cast<int32_t>(static_cast<uint32_t>(u)) < 0) return Error("negative LONG4 size");
        Value v;
        FABRIC_RETURN_IF_ERROR(ReadLong(u, &v));
        Push(std::move(v));
        return absl::OkStatus();
      }
      case INT:
      case LONG: {
        FABRIC_RETURN_IF_ERROR(Line(&text));
        Value v;
        FABRIC_RETURN_IF_ERROR(ParseIntLine(text, op == LONG, &v));
        Push(std::move(v));
        return absl::OkStatus();
      }
      case BINFLOAT: {
        std::string_view b;
        FABRIC_RETURN_IF_ERROR(Take(8, &b));
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<uint8_t>(b[i]);
        double d;
        std::memcpy(&d, &bits, sizeof(d));
        Push(Value(d));
        return absl::OkStatus();
      }
      case FLOAT: {
        FABRIC_RETURN_IF_ERROR(Line(&text));
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
        FABRIC_RETURN_IF_ERROR(ReadLE(op == SHORT_BINUNICODE ? 1 : op == BINUNICODE ? 4 : 8, &u));
        FABRIC_RETURN_IF_ERROR(Take(u, &text));
        return PushString(text);
      case SHORT_BINSTRING:
      case BINSTRING:
        FABRIC_RETURN_IF_ERROR(ReadLE(op == SHORT_BINSTRING ? 1 : 4, &u));
        if (op == BINSTRING && static_cast<int32_t>(static_cast<uint32_t>(u)) < 0) {
          return Error("negative BINSTRING size");
        }
        FABRIC_RETURN_IF_ERROR(Take(u, &text));
        return PushString(text);  // a Python 2 str: taken as text
      case STRING: {
        FABRIC_RETURN_IF_ERROR(Line(&text));
        FABRIC_ASSIGN_OR_RETURN(const std::string str, At(DecodePythonStringLiteral(text)));
        return PushString(str);
      }
      case UNICODE: {
        FABRIC_RETURN_IF_ERROR(Line(&text));
        FABRIC_ASSIGN_OR_RETURN(const std::string str, At(DecodeRawUnicodeEscape(text)));
        return PushString(str);
      }
      case SHORT_BINBYTES:
      case BINBYTES:
      case BINBYTES8:
      case BYTEARRAY8:
        FABRIC_RETURN_IF_ERROR(ReadLE(op == SHORT_BINBYTES ? 1 : op == BINBYTES ? 4 : 8, &u));
        FABRIC_RETURN_IF_ERROR(Take(u, &text));
        Push(Value::Bytes(std::string(text)));
        return absl::OkStatus();

      // Tuples, lists, dicts, sets.
      case EMPTY_TUPLE: Push(Value::Tuple()); return absl::OkStatus();
      case TUPLE1: return MakeTuple(1);
      case TUPLE2: return MakeTuple(2);
      case TUPLE3: return MakeTuple(3);
      case TUPLE: {
        std::vector<Value> items;
        FABRIC_RETURN_IF_ERROR(PopMark(&items));
        Push(Value::Tuple(std::move(items)));
        return absl::OkStatus();
      }
      case EMPTY_LIST: Push(Value::List()); return absl::OkStatus();
      case LIST:
      case FROZENSET: {  // sets load as lists
        std::vector<Value> items;
        FABRIC_RETURN_IF_ERROR(PopMark(&items));
        Push(Value::List(std::move(items)));
        return absl::OkStatus();
      }
      case EMPTY_SET: Push(Value::List()); return absl::OkStatus();
      case APPEND: {
        Value item;
        Value* target = nullptr;
        FABRIC_RETURN_IF_ERROR(Pop(&item));
        FABRIC_RETURN_IF_ERROR(Top(&target));
        std::vector<Value> items;
        items.push_back(std::move(item));
        return Append(target, std::move(items));
      }
      case APPENDS:
      case ADDITEMS: {
        std::vector<Value> items;
        Value* target = nullptr;
        FABRIC_RETURN_IF_ERROR(PopMark(&items));
        FABRIC_RETURN_IF_ERROR(Top(&target));
        return Append(target, std::move(items));
      }
      case EMPTY_DICT: Push(Value::MakeDict()); return absl::OkStatus();
      case DICT: {
        std::vector<Value> kv;
        FABRIC_RETURN_IF_ERROR(PopMark(&kv));
        Value d = Value::MakeDict();
        FABRIC_RETURN_IF_ERROR(SetItems(&d, std::move(kv)));
        Push(std::move(d));
        return absl::OkStatus();
      }
      case SETITEM: {
        std::vector<Value> kv(2);
        Value* target = nullptr;
        FABRIC_RETURN_IF_ERROR(Pop(&kv[1]));
        FABRIC_RETURN_IF_ERROR(Pop(&kv[0]));
        FABRIC_RETURN_IF_ERROR(Top(&target));
        return SetItems(target, std::move(kv));
      }
      case SETITEMS: {
        std::vector<Value> kv;
        Value* target = nullptr;
        FABRIC_RETURN_IF_ERROR(PopMark(&kv));
        FABRIC_RETURN_IF_ERROR(Top(&target));
        return SetItems(target, std::move(kv));
      }

      // Memo.
      case BINGET:
      case LONG_BINGET:
        FABRIC_RETURN_IF_ERROR(ReadLE(op == BINGET ? 1 : 4, &u));
        return MemoGet(u);
      case GET:
        FABRIC_RETURN_IF_ERROR(Line(&text));
        FABRIC_RETURN_IF_ERROR(ParseMemoIndex(text, &u));
        return MemoGet(u);
      case BINPUT:
      case LONG_BINPUT:
        FABRIC_RETURN_IF_ERROR(ReadLE(op == BINPUT ? 1 : 4, &u));
        return MemoPut(u);
      case PUT:
        FABRIC_RETURN_IF_ERROR(Line(&text));
        FABRIC_RETURN_IF_ERROR(ParseMemoIndex(text, &u));
        return MemoPut(u);
      case MEMOIZE:
        return MemoPut(memo_.size());

      // Globals, calls, objects.
      case GLOBAL: {
        std::string_view module, name;
        FABRIC_RETURN_IF_ERROR(Line(&module));
        FABRIC_RETURN_IF_ERROR(Line(&name));
        return PushGlobal(std::string(module), std::string(name));
      }
      case STACK_GLOBAL: {
        Value module, name;
        FABRIC_RETURN_IF_ERROR(Pop(&name));
        FABRIC_RETURN_IF_ERROR(Pop(&module));
        if (!module.is_string() || !name.is_string()) {
          return Error("STACK_GLOBAL needs two strings");
        }
        return PushGlobal(module.as_string(), name.as_string());
      }
      case REDUCE:
      case NEWOBJ: {
        Value args, callable;
        FABRIC_RETURN_IF_ERROR(Pop(&args));
        FABRIC_RETURN_IF_ERROR(Pop(&callable));
        if (!args.is_tuple()) return Error("call arguments are not a tuple");
        FABRIC_ASSIGN_OR_RETURN(Value result, At(CallGlobal(callable, args.items(), op == NEWOBJ, limits_)));
        Push(std::move(result));
        return absl::OkStatus();
      }
      case NEWOBJ_EX: {
        Value kwargs, args, cls;
        FABRIC_RETURN_IF_ERROR(Pop(&kwargs));
        FABRIC_RETURN_IF_ERROR(Pop(&args));
        FABRIC_RETURN_IF_ERROR(Pop(&cls));
        if (!args.is_tuple() || !kwargs.is_dict()) return Error("malformed NEWOBJ_EX");
        if (!kwargs.as_dict().empty()) return Error("NEWOBJ_EX with keyword arguments");
        FABRIC_ASSIGN_OR_RETURN(Value result, At(CallGlobal(cls, args.items(), true, limits_)));
        Push(std::move(result));
        return absl::OkStatus();
      }
      case INST: {
        std::string_view module, name;
        FABRIC_RETURN_IF_ERROR(Line(&module));
        FABRIC_RETURN_IF_ERROR(Line(&name));
        std::vector<Value> args;
        FABRIC_RETURN_IF_ERROR(PopMark(&args));
        const Value cls(Global{FixModule(std::string(module)), std::string(name)});
        FABRIC_ASSIGN_OR_RETURN(Value result, At(CallGlobal(cls, std::move(args), false, limits_)));
        Push(std::move(result));
        return absl::OkStatus();
      }
      case OBJ: {
        std::vector<Value> items;
        FABRIC_RETURN_IF_ERROR(PopMark(&items));
        if (items.empty()) return Error("OBJ without a class");
        const Value cls = items[0];
        items.erase(items.begin());
        FABRIC_ASSIGN_OR_RETURN(Value result, At(CallGlobal(cls, std::move(items), false, limits_)));
        Push(std::move(result));
        return absl::OkStatus();
      }
      case BUILD: {
        Value state;
        Value* target = nullptr;
        FABRIC_RETURN_IF_ERROR(Pop(&state));
        FABRIC_RETURN_IF_ERROR(Top(&target));
        // Objects keep their state; for what we interpret (OrderedDict's
        // _metadata, a tensor subclass's attributes) it is dropped.
        if (target->is_object()) {
          target->as_object().state = std::make_shared<Value>(std::move(state));
        }
        return absl::OkStatus();
      }
      case BINPERSID: {
        Value pid;
        FABRIC_RETURN_IF_ERROR(Pop(&pid));
        return PushPersistentId(std::move(pid));
      }
      case PERSID:
        FABRIC_RETURN_IF_ERROR(Line(&text));
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

  // Height (0 for leaves) and expanded size (bytes and nodes, shared parts
  // counted once per reference) of `v`, failing beyond max_depth, on a cycle
  // or beyond the expansion limit, so that every recursive walk of the result
  // is bounded. Shared subtrees are measured once.
  struct Measure {
    int height = 0;
    uint64_t size = 0;
  };

  absl::Status Measured(const Value& v, int depth, Measure* m) {
    const void* key = ContainerKey(v);
    if (key == nullptr) {
      *m = Measure{0, 1 + PayloadBytes(v) + (v.is_bytes() ? v.as_bytes().size() : 0)};
      return absl::OkStatus();
    }
    if (depth > options_.max_depth) return TooDeep();
    auto [it, inserted] = measures_.emplace(key, Measure{-1, 0});
    if (!inserted) {
      if (it->second.height < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(what_, ": bad pickle: the result contains a reference cycle"));
      }
      if (depth + it->second.height > options_.max_depth) return TooDeep();
      *m = it->second;
      return absl::OkStatus();
    }
    const uint64_t limit = limits_.expansion_limit();
    Measure total{0, 1};
    absl::Status s;
    ForEachChild(v, [&](const Value& child) {
      if (!s.ok()) return;
      Measure c;
      s = Measured(child, depth + 1, &c);
      total.height = std::max(total.height, c.height + 1);
      total.size = std::min(total.size + c.size, limit + 1);  // saturates
    });
    FABRIC_RETURN_IF_ERROR(s);
    if (total.size > limit) {
      return absl::InvalidArgumentError(absl::StrCat(
          what_, ": bad pickle: shared references expand the result past ", limit,
          " bytes (UnpickleOptions::max_expanded_size)"));
    }
    measures_[key] = total;
    *m = total;
    return absl::OkStatus();
  }

  absl::Status TooDeep() const {
    return absl::InvalidArgumentError(absl::StrCat(
        what_, ": bad pickle: the result is nested deeper than ", options_.max_depth,
        " levels"));
  }

  absl::Status CheckDepth(const Value& v) {
    Measure m;
    return Measured(v, 0, &m);
  }

  // Empties every container left in the stack and memo that `result` does not
  // hold, so that reference cycles among them (a list appended to itself, an
  // object built with itself as state) are freed rather than leaked.
  void ReleaseUnreachable(const Value* result) {
    std::vector<Value> work = std::move(stack_);
    for (auto& [index, v] : memo_) work.push_back(std::move(v));
    memo_.clear();
    absl::flat_hash_set<const void*> released;
    while (!work.empty()) {
      Value v = std::move(work.back());
      work.pop_back();
      const void* key = ContainerKey(v);
      if (key == nullptr || (result != nullptr && measures_.contains(key)) ||
          !released.insert(key).second) {
        continue;
      }
      TakeChildren(v, &work);
    }
  }

  std::string_view data_;
  std::string what_;
  const UnpickleOptions& options_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  absl::flat_hash_map<uint64_t, Value> memo_;
  InputLimits limits_;
  absl::flat_hash_map<const void*, Measure> measures_;  // containers of the result
};

}  // namespace

absl::StatusOr<Value> Unpickle(std::string_view bytes, std::string_view what,
                               const UnpickleOptions& options) {
  return Reader(bytes, what, options).Run();
}

}  // namespace fabric::pickle
