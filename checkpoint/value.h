// Value: the Python object model of a checkpoint.
//
// A torch.save file is a pickle of Python objects (dicts, lists, tuples,
// numbers, strings, tensors, and now and then an instance of some class). Value
// represents such an object tree in C++, so one tree can be saved by us and
// loaded by Python, and the reverse. Composite values (list, tuple, dict,
// object) are shared by reference on copy, as Python objects are; use Clone()
// for a deep copy of the containers (tensors are never copied).
#ifndef FABRIC_CHECKPOINT_VALUE_H_
#define FABRIC_CHECKPOINT_VALUE_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <ATen/core/Tensor.h>

namespace fabric {

class Value;
class Dict;

// A tensor in a loaded file that has not been read yet: the pickle's
// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` call,
// with `storage` the persistent id ('storage', <dtype>Storage, key, location,
// numel). The bytes live in the archive record `data/<storage_key>`.
struct TensorRef {
  std::string storage_key;
  at::ScalarType dtype = at::kFloat;
  std::string location = "cpu";  // where it was saved from, e.g. "cuda:0"
  int64_t storage_numel = 0;     // elements in the whole storage
  int64_t storage_offset = 0;    // in elements
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  bool requires_grad = false;

  int64_t numel() const;
  // Bytes of the storage record this tensor views.
  int64_t storage_nbytes() const;
  bool is_contiguous() const;
};

// A module-qualified Python name: a class, a function, or a constant such as
// torch.float32 (pickle's GLOBAL).
struct Global {
  std::string module;
  std::string name;
  bool operator==(const Global& o) const { return module == o.module && name == o.name; }
  std::string ToString() const { return module + "." + name; }
};

// An instance of a Python class the pickle layer does not interpret: the
// result of `callable(*args)` (REDUCE) or `cls.__new__(cls, *args)` (NEWOBJ),
// then `obj.__setstate__(state)` or `obj.__dict__.update(state)` (BUILD).
// DCP's metadata dataclasses, for example, load and save as Objects.
struct Object {
  Global callable;
  std::shared_ptr<std::vector<Value>> args =  // never null
      std::make_shared<std::vector<Value>>();
  bool newobj = false;                      // NEWOBJ rather than REDUCE
  std::shared_ptr<Value> state;             // null when there was no BUILD
  // Items appended (APPENDS) or set (SETITEMS) on the object after creation,
  // as pickle does for list and dict subclasses such as OrderedDict.
  std::shared_ptr<std::vector<Value>> list_items;
  std::shared_ptr<std::vector<std::pair<Value, Value>>> dict_items;
};

class Value {
 public:
  enum class Kind {
    kNone, kBool, kInt, kFloat, kString, kBytes,
    kTensor,     // a materialized at::Tensor
    kTensorRef,  // a tensor in a file, not yet read
    kList, kTuple, kDict,
    kGlobal,     // a class, function or constant by name (torch.float32, ...)
    kObject,     // any other Python object, uninterpreted
  };

  Value() = default;  // None
  Value(const Value&) = default;
  Value(Value&&) noexcept = default;
  Value& operator=(const Value&) = default;
  Value& operator=(Value&&) noexcept = default;
  // Frees nested containers with a loop rather than recursion, so that a very
  // deep tree (say, from a malicious pickle) cannot overflow the stack.
  ~Value() {
    if (v_.index() >= kFirstContainerIndex) DestroyContainer();
  }
  Value(std::nullptr_t) {}
  Value(bool b) : v_(b) {}
  Value(int v) : v_(static_cast<int64_t>(v)) {}
  Value(int64_t v) : v_(v) {}
  Value(double v) : v_(v) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(at::Tensor t) : v_(std::move(t)) {}
  Value(TensorRef r) : v_(std::make_shared<TensorRef>(std::move(r))) {}
  Value(Global g) : v_(std::move(g)) {}
  Value(Object o) : v_(std::make_shared<Object>(std::move(o))) {}
  Value(Dict d);

  static Value Bytes(std::string bytes);
  static Value List(std::vector<Value> items = {});
  static Value Tuple(std::vector<Value> items = {});
  static Value MakeDict();  // an empty dict

  Kind kind() const;
  static const char* KindName(Kind k);
  const char* kind_name() const { return KindName(kind()); }

  bool is_none() const { return kind() == Kind::kNone; }
  bool is_bool() const { return kind() == Kind::kBool; }
  bool is_int() const { return kind() == Kind::kInt; }
  bool is_float() const { return kind() == Kind::kFloat; }
  bool is_string() const { return kind() == Kind::kString; }
  bool is_bytes() const { return kind() == Kind::kBytes; }
  bool is_tensor() const { return kind() == Kind::kTensor; }
  bool is_tensor_ref() const { return kind() == Kind::kTensorRef; }
  bool is_list() const { return kind() == Kind::kList; }
  bool is_tuple() const { return kind() == Kind::kTuple; }
  bool is_dict() const { return kind() == Kind::kDict; }
  bool is_global() const { return kind() == Kind::kGlobal; }
  bool is_object() const { return kind() == Kind::kObject; }
  // A list or a tuple.
  bool is_sequence() const { return is_list() || is_tuple(); }

  // Accessors; each requires the matching kind (checked with TORCH_CHECK-like
  // assertions: calling the wrong one is a programming error, not bad input).
  bool as_bool() const;
  int64_t as_int() const;
  double as_float() const;  // also accepts an int
  const std::string& as_string() const;
  const std::string& as_bytes() const;
  const at::Tensor& as_tensor() const;
  at::Tensor& as_tensor();
  const TensorRef& as_tensor_ref() const;
  const std::vector<Value>& items() const;  // list or tuple
  std::vector<Value>& items();              // list or tuple
  const Dict& as_dict() const;
  Dict& as_dict();
  const Global& as_global() const;
  const Object& as_object() const;
  Object& as_object();

  // A deep copy of lists, tuples, dicts and objects; tensors are shared.
  Value Clone() const;

  // Python-like repr, abbreviated for tensors, for messages and `fabric inspect`.
  std::string DebugString(int max_items = 8) const;

  // Structural equality; tensors compare by dtype, shape and bytes (on CPU).
  friend bool operator==(const Value& a, const Value& b);
  friend bool operator!=(const Value& a, const Value& b) { return !(a == b); }

 private:
  // v_ alternatives from this index on are lists, tuples, dicts, globals and
  // objects.
  static constexpr size_t kFirstContainerIndex = 8;
  void DestroyContainer() noexcept;

  struct BytesBox { std::string data; };
  struct ListBox { std::vector<Value> items; };
  struct TupleBox { std::vector<Value> items; };
  std::variant<std::monostate, bool, int64_t, double, std::string,
               std::shared_ptr<BytesBox>, at::Tensor, std::shared_ptr<TensorRef>,
               std::shared_ptr<ListBox>, std::shared_ptr<TupleBox>,
               std::shared_ptr<Dict>, Global, std::shared_ptr<Object>>
      v_;
};

// An insertion-ordered dict, keyed by Values. Every key is hashed: string and
// int keys (all that state dicts use) in their own indexes, other keys
// (tuples, objects) by a structural hash, so lookups and inserts take
// constant time on average.
class Dict {
 public:
  Dict() = default;
  Dict(std::initializer_list<std::pair<Value, Value>> items);

  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }

  // Inserts or replaces; replacing keeps the key's original position.
  void Set(Value key, Value value);
  // nullptr when absent.
  const Value* Find(const Value& key) const;
  Value* Find(const Value& key);
  const Value* Find(std::string_view key) const;
  Value* Find(std::string_view key);
  // String keys without ambiguity between the Value and string_view forms.
  const Value* Find(const char* key) const { return Find(std::string_view(key)); }
  Value* Find(const char* key) { return Find(std::string_view(key)); }
  const Value* Find(const std::string& key) const { return Find(std::string_view(key)); }
  Value* Find(const std::string& key) { return Find(std::string_view(key)); }
  bool Contains(std::string_view key) const { return Find(key) != nullptr; }
  // Removes the key; returns whether it was present.
  bool Erase(const Value& key);

  const std::vector<std::pair<Value, Value>>& items() const { return items_; }
  // Direct access; the key index is rebuilt on the next lookup, so keys may
  // be edited too (later duplicates of a key are then shadowed by the first).
  std::vector<std::pair<Value, Value>>& mutable_items() {
    index_stale_ = true;
    return items_;
  }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  // Rebuilds the index if mutable_items() was handed out since the last
  // lookup. Const lookups may do this too, so a Dict is not safe for
  // concurrent reads right after mutable_items().
  void Reindex() const;
  void EnsureIndexed() const {
    if (index_stale_) Reindex();
  }
  std::vector<std::pair<Value, Value>> items_;
  mutable std::unordered_map<std::string, size_t> string_index_;
  mutable std::unordered_map<int64_t, size_t> int_index_;
  // Other keys (tuples, objects such as DCP's MetadataIndex) by a structural
  // hash, so that building a dict of n such keys stays linear.
  mutable std::unordered_multimap<size_t, size_t> other_index_;
  mutable bool index_stale_ = false;
};

// The Python name of a dtype's legacy storage class, e.g. kFloat ->
// "FloatStorage", and the reverse. Returns nullopt for dtypes torch.save cannot
// write with a typed storage.
std::optional<std::string> StorageClassName(at::ScalarType dtype);
std::optional<at::ScalarType> DtypeFromStorageClass(std::string_view name);
// torch.<name> constants for dtypes, e.g. kBFloat16 <-> "bfloat16".
std::optional<std::string> DtypeName(at::ScalarType dtype);
std::optional<at::ScalarType> DtypeFromName(std::string_view name);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_VALUE_H_
