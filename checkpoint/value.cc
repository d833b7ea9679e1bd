#include "checkpoint/value.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace fabric {

// ---------------------------------------------------------------------------
// TensorRef

int64_t TensorRef::numel() const {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

int64_t TensorRef::storage_nbytes() const {
  return storage_numel * static_cast<int64_t>(c10::elementSize(dtype));
}

bool TensorRef::is_contiguous() const {
  if (sizes.size() != strides.size()) return false;
  int64_t expected = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    if (sizes[i] == 0) return true;  // an empty tensor is contiguous
    if (sizes[i] != 1 && strides[i] != expected) return false;
    expected *= sizes[i];
  }
  return true;
}

// ---------------------------------------------------------------------------
// Value construction and access

Value::Value(Dict d) : v_(std::make_shared<Dict>(std::move(d))) {}

Value Value::Bytes(std::string bytes) {
  Value v;
  v.v_ = std::make_shared<BytesBox>(BytesBox{std::move(bytes)});
  return v;
}

Value Value::List(std::vector<Value> items) {
  Value v;
  v.v_ = std::make_shared<ListBox>(ListBox{std::move(items)});
  return v;
}

Value Value::Tuple(std::vector<Value> items) {
  Value v;
  v.v_ = std::make_shared<TupleBox>(TupleBox{std::move(items)});
  return v;
}

Value Value::MakeDict() { return Value(Dict()); }

Value::Kind Value::kind() const {
  // The order of v_'s alternatives, one per Kind.
  static constexpr Kind kKinds[] = {
      Kind::kNone,   Kind::kBool,      Kind::kInt,  Kind::kFloat, Kind::kString,
      Kind::kBytes,  Kind::kTensor,    Kind::kTensorRef, Kind::kList,
      Kind::kTuple,  Kind::kDict,      Kind::kGlobal, Kind::kObject,
  };
  static_assert(sizeof(kKinds) / sizeof(kKinds[0]) ==
                    std::variant_size_v<decltype(v_)>,
                "one Kind per alternative");
  return kKinds[v_.index()];
}

const char* Value::KindName(Kind k) {
  switch (k) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kBytes: return "bytes";
    case Kind::kTensor: return "Tensor";
    case Kind::kTensorRef: return "TensorRef";
    case Kind::kList: return "list";
    case Kind::kTuple: return "tuple";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "global";
    case Kind::kObject: return "object";
  }
  return "?";
}

#define FABRIC_VALUE_CHECK_KIND(expected)                                  \
  TORCH_CHECK(kind() == (expected), "Value: expected ", KindName(expected), \
              ", got ", kind_name())

bool Value::as_bool() const {
  FABRIC_VALUE_CHECK_KIND(Kind::kBool);
  return std::get<bool>(v_);
}

int64_t Value::as_int() const {
  FABRIC_VALUE_CHECK_KIND(Kind::kInt);
  return std::get<int64_t>(v_);
}

double Value::as_float() const {
  if (is_int()) return static_cast<double>(std::get<int64_t>(v_));
  FABRIC_VALUE_CHECK_KIND(Kind::kFloat);
  return std::get<double>(v_);
}

const std::string& Value::as_string() const {
  FABRIC_VALUE_CHECK_KIND(Kind::kString);
  return std::get<std::string>(v_);
}

const std::string& Value::as_bytes() const {
  FABRIC_VALUE_CHECK_KIND(Kind::kBytes);
  return std::get<std::shared_ptr<BytesBox>>(v_)->data;
}

const at::Tensor& Value::as_tensor() const {
  FABRIC_VALUE_CHECK_KIND(Kind::kTensor);
  return std::get<at::Tensor>(v_);
}

at::Tensor& Value::as_tensor() {
  FABRIC_VALUE_CHECK_KIND(Kind::kTensor);
  return std::get<at::Tensor>(v_);
}

const TensorRef& Value::as_tensor_ref() const {
  FABRIC_VALUE_CHECK_KIND(Kind::kTensorRef);
  return *std::get<std::shared_ptr<TensorRef>>(v_);
}

const std::vector<Value>& Value::items() const {
  if (is_tuple()) return std::get<std::shared_ptr<TupleBox>>(v_)->items;
  FABRIC_VALUE_CHECK_KIND(Kind::kList);
  return std::get<std::shared_ptr<ListBox>>(v_)->items;
}

std::vector<Value>& Value::items() {
  if (is_tuple()) return std::get<std::shared_ptr<TupleBox>>(v_)->items;
  FABRIC_VALUE_CHECK_KIND(Kind::kList);
  return std::get<std::shared_ptr<ListBox>>(v_)->items;
}

const Dict& Value::as_dict() const {
  FABRIC_VALUE_CHECK_KIND(Kind::kDict);
  return *std::get<std::shared_ptr<Dict>>(v_);
}

Dict& Value::as_dict() {
  FABRIC_VALUE_CHECK_KIND(Kind::kDict);
  return *std::get<std::shared_ptr<Dict>>(v_);
}

const Global& Value::as_global() const {
  FABRIC_VALUE_CHECK_KIND(Kind::kGlobal);
  return std::get<Global>(v_);
}

const Object& Value::as_object() const {
  FABRIC_VALUE_CHECK_KIND(Kind::kObject);
  return *std::get<std::shared_ptr<Object>>(v_);
}

Object& Value::as_object() {
  FABRIC_VALUE_CHECK_KIND(Kind::kObject);
  return *std::get<std::shared_ptr<Object>>(v_);
}

#undef FABRIC_VALUE_CHECK_KIND

// ---------------------------------------------------------------------------
// Clone

namespace {

std::vector<Value> CloneAll(const std::vector<Value>& items) {
  std::vector<Value> out;
  out.reserve(items.size());
  for (const Value& v : items) out.push_back(v.Clone());
  return out;
}

std::vector<std::pair<Value, Value>> CloneAll(
    const std::vector<std::pair<Value, Value>>& items) {
  std::vector<std::pair<Value, Value>> out;
  out.reserve(items.size());
  for (const auto& kv : items) out.emplace_back(kv.first.Clone(), kv.second.Clone());
  return out;
}

}  // namespace

Value Value::Clone() const {
  switch (kind()) {
    case Kind::kList: return List(CloneAll(items()));
    case Kind::kTuple: return Tuple(CloneAll(items()));
    case Kind::kDict: {
      Dict d;
      d.mutable_items() = CloneAll(as_dict().items());
      return Value(std::move(d));
    }
    case Kind::kObject: {
      const Object& o = as_object();
      Object c;
      c.callable = o.callable;
      c.newobj = o.newobj;
      c.args = std::make_shared<std::vector<Value>>(
          o.args ? CloneAll(*o.args) : std::vector<Value>());
      if (o.state) c.state = std::make_shared<Value>(o.state->Clone());
      if (o.list_items) {
        c.list_items = std::make_shared<std::vector<Value>>(CloneAll(*o.list_items));
      }
      if (o.dict_items) {
        c.dict_items =
            std::make_shared<std::vector<std::pair<Value, Value>>>(CloneAll(*o.dict_items));
      }
      return Value(std::move(c));
    }
    case Kind::kTensorRef: return Value(as_tensor_ref());
    default: return *this;  // scalars, strings, bytes (immutable), tensors, globals
  }
}

void Value::DestroyContainer() noexcept {
  // Only a container this Value alone holds is about to be freed; emptying it
  // first (children into `work`) keeps nested destructors one level deep.
  auto sole = [](const auto& ptr) { return ptr && ptr.use_count() == 1; };
  auto has_children = [&](const Value& v) {
    if (auto* list = std::get_if<std::shared_ptr<ListBox>>(&v.v_)) {
      return sole(*list) && !(*list)->items.empty();
    }
    if (auto* tuple = std::get_if<std::shared_ptr<TupleBox>>(&v.v_)) {
      return sole(*tuple) && !(*tuple)->items.empty();
    }
    if (auto* dict = std::get_if<std::shared_ptr<Dict>>(&v.v_)) {
      return sole(*dict) && !(*dict)->empty();
    }
    if (auto* obj = std::get_if<std::shared_ptr<Object>>(&v.v_)) return sole(*obj);
    return false;
  };
  if (!has_children(*this)) return;  // the common leaf-container case

  std::vector<Value> work;
  auto take_all = [&work](std::vector<Value>& items) {
    for (Value& item : items) work.push_back(std::move(item));
    items.clear();
  };
  auto take_pairs = [&work](std::vector<std::pair<Value, Value>>& items) {
    for (auto& kv : items) {
      work.push_back(std::move(kv.first));
      work.push_back(std::move(kv.second));
    }
    items.clear();
  };
  auto take_children = [&](Value& v) {
    if (auto* list = std::get_if<std::shared_ptr<ListBox>>(&v.v_)) {
      if (sole(*list)) take_all((*list)->items);
    } else if (auto* tuple = std::get_if<std::shared_ptr<TupleBox>>(&v.v_)) {
      if (sole(*tuple)) take_all((*tuple)->items);
    } else if (auto* dict = std::get_if<std::shared_ptr<Dict>>(&v.v_)) {
      if (sole(*dict)) take_pairs((*dict)->mutable_items());
    } else if (auto* obj = std::get_if<std::shared_ptr<Object>>(&v.v_)) {
      if (sole(*obj)) {
        Object& o = **obj;
        if (sole(o.args)) take_all(*o.args);
        if (sole(o.list_items)) take_all(*o.list_items);
        if (sole(o.dict_items)) take_pairs(*o.dict_items);
        if (sole(o.state)) work.push_back(std::move(*o.state));
      }
    }
  };
  take_children(*this);
  while (!work.empty()) {
    Value v = std::move(work.back());
    work.pop_back();
    if (v.v_.index() >= kFirstContainerIndex) take_children(v);
    // `v` now holds no children it alone owns; destroying it is shallow.
  }
}

// ---------------------------------------------------------------------------
// DebugString

namespace {

void AppendQuoted(std::string* out, std::string_view s, bool bytes) {
  if (bytes) out->push_back('b');
  out->push_back('\'');
  for (unsigned char c : s) {
    switch (c) {
      case '\\': out->append("\\\\"); break;
      case '\'': out->append("\\'"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20 || c == 0x7f || (bytes && c >= 0x80)) {
          absl::StrAppendFormat(out, "\\x%02x", c);
        } else {
          out->push_back(static_cast<char>(c));  // UTF-8 passes through
        }
    }
  }
  out->push_back('\'');
}

// The shortest decimal that reads back as `d`, as Python's repr prints it.
std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

std::string ShapeString(at::ScalarType dtype, c10::IntArrayRef sizes) {
  std::optional<std::string> name = DtypeName(dtype);
  return absl::StrCat(name ? *name : std::string(c10::toString(dtype)), "[",
                      absl::StrJoin(sizes, ", "), "]");
}

void AppendDebug(std::string* out, const Value& v, int max_items);

template <typename Range, typename Fn>
void AppendItems(std::string* out, const Range& items, int max_items, Fn fn) {
  int n = 0;
  for (const auto& item : items) {
    if (n > 0) out->append(", ");
    if (max_items >= 0 && n >= max_items) {
      absl::StrAppend(out, "... (", items.size() - n, " more)");
      return;
    }
    fn(item);
    ++n;
  }
}

void AppendDebug(std::string* out, const Value& v, int max_items) {
  using Kind = Value::Kind;
  switch (v.kind()) {
    case Kind::kNone: out->append("None"); return;
    case Kind::kBool: out->append(v.as_bool() ? "True" : "False"); return;
    case Kind::kInt: absl::StrAppend(out, v.as_int()); return;
    case Kind::kFloat: out->append(FloatRepr(v.as_float())); return;
    case Kind::kString: AppendQuoted(out, v.as_string(), false); return;
    case Kind::kBytes: AppendQuoted(out, v.as_bytes(), true); return;
    case Kind::kTensor: {
      const at::Tensor& t = v.as_tensor();
      if (!t.defined()) {
        out->append("tensor(undefined)");
        return;
      }
      absl::StrAppend(out, "tensor(", ShapeString(t.scalar_type(), t.sizes()));
      if (!t.device().is_cpu()) absl::StrAppend(out, ", ", t.device().str());
      out->append(")");
      return;
    }
    case Kind::kTensorRef: {
      const TensorRef& r = v.as_tensor_ref();
      absl::StrAppend(out, "TensorRef(", ShapeString(r.dtype, r.sizes), ", key='",
                      r.storage_key, "', ", r.location);
      if (r.storage_offset != 0) absl::StrAppend(out, ", offset=", r.storage_offset);
      if (!r.is_contiguous()) {
        absl::StrAppend(out, ", stride=(", absl::StrJoin(r.strides, ", "), ")");
      }
      if (r.requires_grad) out->append(", requires_grad=True");
      out->append(")");
      return;
    }
    case Kind::kList:
    case Kind::kTuple: {
      const bool tuple = v.is_tuple();
      out->append(tuple ? "(" : "[");
      AppendItems(out, v.items(), max_items,
                  [&](const Value& item) { AppendDebug(out, item, max_items); });
      if (tuple && v.items().size() == 1) out->append(",");
      out->append(tuple ? ")" : "]");
      return;
    }
    case Kind::kDict: {
      out->append("{");
      AppendItems(out, v.as_dict().items(), max_items, [&](const auto& kv) {
        AppendDebug(out, kv.first, max_items);
        out->append(": ");
        AppendDebug(out, kv.second, max_items);
      });
      out->append("}");
      return;
    }
    case Kind::kGlobal: out->append(v.as_global().ToString()); return;
    case Kind::kObject: {
      const Object& o = v.as_object();
      absl::StrAppend(out, o.callable.ToString(), o.newobj ? ".__new__(" : "(");
      if (o.args) {
        AppendItems(out, *o.args, max_items,
                    [&](const Value& item) { AppendDebug(out, item, max_items); });
      }
      out->append(")");
      if (o.list_items && !o.list_items->empty()) {
        out->append(" + [");
        AppendItems(out, *o.list_items, max_items,
                    [&](const Value& item) { AppendDebug(out, item, max_items); });
        out->append("]");
      }
      if (o.dict_items && !o.dict_items->empty()) {
        out->append(" + {");
        AppendItems(out, *o.dict_items, max_items, [&](const auto& kv) {
          AppendDebug(out, kv.first, max_items);
          out->append(": ");
          AppendDebug(out, kv.second, max_items);
        });
        out->append("}");
      }
      if (o.state) {
        out->append(" state=");
        AppendDebug(out, *o.state, max_items);
      }
      return;
    }
  }
}

}  // namespace

std::string Value::DebugString(int max_items) const {
  std::string out;
  AppendDebug(&out, *this, max_items);
  return out;
}

// ---------------------------------------------------------------------------
// Equality

namespace {

bool TensorsEqual(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.is_same(b)) return true;
  at::Tensor ca = a.cpu().contiguous();
  at::Tensor cb = b.cpu().contiguous();
  const size_t nbytes = static_cast<size_t>(ca.numel()) * ca.element_size();
  return nbytes == 0 || std::memcmp(ca.const_data_ptr(), cb.const_data_ptr(), nbytes) == 0;
}

bool TensorRefsEqual(const TensorRef& a, const TensorRef& b) {
  return a.storage_key == b.storage_key && a.dtype == b.dtype && a.location == b.location &&
         a.storage_numel == b.storage_numel && a.storage_offset == b.storage_offset &&
         a.sizes == b.sizes && a.strides == b.strides && a.requires_grad == b.requires_grad;
}

template <typename T>
bool OptionalVectorsEqual(const std::shared_ptr<std::vector<T>>& a,
                          const std::shared_ptr<std::vector<T>>& b) {
  const bool a_empty = !a || a->empty();
  const bool b_empty = !b || b->empty();
  if (a_empty || b_empty) return a_empty == b_empty;
  return *a == *b;
}

// Like Python's dict ==: same keys with equal values, in any order.
bool DictsEqual(const Dict& a, const Dict& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [key, value] : a.items()) {
    const Value* other = b.Find(key);
    if (other == nullptr || !(value == *other)) return false;
  }
  return true;
}

}  // namespace

bool operator==(const Value& a, const Value& b) {
  using Kind = Value::Kind;
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::kNone: return true;
    case Kind::kBool: return a.as_bool() == b.as_bool();
    case Kind::kInt: return a.as_int() == b.as_int();
    case Kind::kFloat: {
      const double x = a.as_float(), y = b.as_float();
      return x == y || (std::isnan(x) && std::isnan(y));
    }
    case Kind::kString: return a.as_string() == b.as_string();
    case Kind::kBytes: return a.as_bytes() == b.as_bytes();
    case Kind::kTensor: return TensorsEqual(a.as_tensor(), b.as_tensor());
    case Kind::kTensorRef: return TensorRefsEqual(a.as_tensor_ref(), b.as_tensor_ref());
    case Kind::kList:
    case Kind::kTuple: return a.items() == b.items();
    case Kind::kDict: return DictsEqual(a.as_dict(), b.as_dict());
    case Kind::kGlobal: return a.as_global() == b.as_global();
    case Kind::kObject: {
      const Object& x = a.as_object();
      const Object& y = b.as_object();
      if (!(x.callable == y.callable) || x.newobj != y.newobj) return false;
      if (!OptionalVectorsEqual(x.args, y.args)) return false;
      if (!OptionalVectorsEqual(x.list_items, y.list_items)) return false;
      if (!OptionalVectorsEqual(x.dict_items, y.dict_items)) return false;
      if (static_cast<bool>(x.state) != static_cast<bool>(y.state)) return false;
      return !x.state || *x.state == *y.state;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------
// Dict

namespace {

size_t Mix(size_t h, size_t v) { return h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2)); }

// A hash consistent with operator==, for keys that are neither str nor int.
// It visits at most `*budget` nodes in a fixed order (later parts only add
// their kind, and a dict only its size, which keeps it consistent), so hashing
// a huge or deeply shared key stays cheap.
size_t StructuralHash(const Value& v, int* budget) {
  size_t h = static_cast<size_t>(v.kind());
  if (--*budget < 0) return h;
  switch (v.kind()) {
    case Value::Kind::kBool: return Mix(h, v.as_bool());
    case Value::Kind::kInt: return Mix(h, std::hash<int64_t>()(v.as_int()));
    case Value::Kind::kFloat: return Mix(h, std::hash<double>()(v.as_float()));
    case Value::Kind::kString: return Mix(h, std::hash<std::string>()(v.as_string()));
    case Value::Kind::kBytes: return Mix(h, std::hash<std::string>()(v.as_bytes()));
    case Value::Kind::kGlobal: return Mix(h, std::hash<std::string>()(v.as_global().ToString()));
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      for (const Value& item : v.items()) {
        if (*budget <= 0) break;
        h = Mix(h, StructuralHash(item, budget));
      }
      return Mix(h, v.items().size());
    case Value::Kind::kObject: {
      const Object& o = v.as_object();
      h = Mix(h, std::hash<std::string>()(o.callable.ToString()));
      for (const Value& a : *o.args) {
        if (*budget <= 0) break;
        h = Mix(h, StructuralHash(a, budget));
      }
      if (o.state && *budget > 0) h = Mix(h, StructuralHash(*o.state, budget));
      return h;
    }
    case Value::Kind::kDict:
      return Mix(h, v.as_dict().size());  // order-independent, as dict equality is
    default:
      return h;  // tensors and None: the kind alone
  }
}

size_t StructuralHash(const Value& v) {
  int budget = 256;
  return StructuralHash(v, &budget);
}

}  // namespace

Dict::Dict(std::initializer_list<std::pair<Value, Value>> items) {
  for (const auto& kv : items) Set(kv.first, kv.second);
}

void Dict::Reindex() const {
  string_index_.clear();
  int_index_.clear();
  other_index_.clear();
  for (size_t i = 0; i < items_.size(); ++i) {
    const Value& key = items_[i].first;
    if (key.is_string()) {
      string_index_.emplace(key.as_string(), i);
    } else if (key.is_int()) {
      int_index_.emplace(key.as_int(), i);
    } else {
      other_index_.emplace(StructuralHash(key), i);
    }
  }
  index_stale_ = false;
}

const Value* Dict::Find(const Value& key) const {
  EnsureIndexed();
  if (key.is_string()) {
    auto it = string_index_.find(key.as_string());
    return it == string_index_.end() ? nullptr : &items_[it->second].second;
  }
  if (key.is_int()) {
    auto it = int_index_.find(key.as_int());
    return it == int_index_.end() ? nullptr : &items_[it->second].second;
  }
  auto [begin, end] = other_index_.equal_range(StructuralHash(key));
  for (auto it = begin; it != end; ++it) {
    if (items_[it->second].first == key) return &items_[it->second].second;
  }
  return nullptr;
}

Value* Dict::Find(const Value& key) {
  return const_cast<Value*>(static_cast<const Dict*>(this)->Find(key));
}

const Value* Dict::Find(std::string_view key) const {
  EnsureIndexed();
  auto it = string_index_.find(std::string(key));
  return it == string_index_.end() ? nullptr : &items_[it->second].second;
}

Value* Dict::Find(std::string_view key) {
  return const_cast<Value*>(static_cast<const Dict*>(this)->Find(key));
}

void Dict::Set(Value key, Value value) {
  if (Value* existing = Find(key)) {
    *existing = std::move(value);
    return;
  }
  const size_t index = items_.size();
  if (key.is_string()) {
    string_index_.emplace(key.as_string(), index);
  } else if (key.is_int()) {
    int_index_.emplace(key.as_int(), index);
  } else {
    other_index_.emplace(StructuralHash(key), index);
  }
  items_.emplace_back(std::move(key), std::move(value));
}

bool Dict::Erase(const Value& key) {
  EnsureIndexed();
  const Value* found = Find(key);
  if (found == nullptr) return false;
  // `found` points at items_[i].second; recover i from the pair's address.
  size_t index = 0;
  while (&items_[index].second != found) ++index;
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(index));
  Reindex();
  return true;
}

// ---------------------------------------------------------------------------
// Dtype tables

namespace {

struct DtypeNames {
  at::ScalarType dtype;
  const char* name;           // torch.<name>
  const char* storage_class;  // torch.<storage_class>, or nullptr
};

// Storage classes are those of torch/storage.py's _dtype_to_storage_type_map;
// newer dtypes are saved as an UntypedStorage plus the dtype (no class here).
constexpr DtypeNames kDtypes[] = {
    {at::ScalarType::Float, "float32", "FloatStorage"},
    {at::ScalarType::Double, "float64", "DoubleStorage"},
    {at::ScalarType::Half, "float16", "HalfStorage"},
    {at::ScalarType::BFloat16, "bfloat16", "BFloat16Storage"},
    {at::ScalarType::Long, "int64", "LongStorage"},
    {at::ScalarType::Int, "int32", "IntStorage"},
    {at::ScalarType::Short, "int16", "ShortStorage"},
    {at::ScalarType::Char, "int8", "CharStorage"},
    {at::ScalarType::Byte, "uint8", "ByteStorage"},
    {at::ScalarType::Bool, "bool", "BoolStorage"},
    {at::ScalarType::ComplexFloat, "complex64", "ComplexFloatStorage"},
    {at::ScalarType::ComplexDouble, "complex128", "ComplexDoubleStorage"},
    {at::ScalarType::QInt8, "qint8", "QInt8Storage"},
    {at::ScalarType::QUInt8, "quint8", "QUInt8Storage"},
    {at::ScalarType::QInt32, "qint32", "QInt32Storage"},
    {at::ScalarType::QUInt4x2, "quint4x2", "QUInt4x2Storage"},
    {at::ScalarType::QUInt2x4, "quint2x4", "QUInt2x4Storage"},
    {at::ScalarType::ComplexHalf, "complex32", nullptr},
    {at::ScalarType::Float8_e5m2, "float8_e5m2", nullptr},
    {at::ScalarType::Float8_e4m3fn, "float8_e4m3fn", nullptr},
    {at::ScalarType::Float8_e5m2fnuz, "float8_e5m2fnuz", nullptr},
    {at::ScalarType::Float8_e4m3fnuz, "float8_e4m3fnuz", nullptr},
    {at::ScalarType::Float8_e8m0fnu, "float8_e8m0fnu", nullptr},
    {at::ScalarType::Float4_e2m1fn_x2, "float4_e2m1fn_x2", nullptr},
    {at::ScalarType::UInt16, "uint16", nullptr},
    {at::ScalarType::UInt32, "uint32", nullptr},
    {at::ScalarType::UInt64, "uint64", nullptr},
    {at::ScalarType::Bits1x8, "bits1x8", nullptr},
    {at::ScalarType::Bits2x4, "bits2x4", nullptr},
    {at::ScalarType::Bits4x2, "bits4x2", nullptr},
    {at::ScalarType::Bits8, "bits8", nullptr},
    {at::ScalarType::Bits16, "bits16", nullptr},
};

// Python's other spellings of the same dtypes (torch.float is torch.float32).
constexpr std::pair<const char*, at::ScalarType> kDtypeAliases[] = {
    {"float", at::ScalarType::Float},         {"double", at::ScalarType::Double},
    {"half", at::ScalarType::Half},           {"long", at::ScalarType::Long},
    {"int", at::ScalarType::Int},             {"short", at::ScalarType::Short},
    {"cfloat", at::ScalarType::ComplexFloat}, {"cdouble", at::ScalarType::ComplexDouble},
    {"chalf", at::ScalarType::ComplexHalf},
};

}  // namespace

std::optional<std::string> StorageClassName(at::ScalarType dtype) {
  for (const DtypeNames& d : kDtypes) {
    if (d.dtype == dtype) {
      if (d.storage_class == nullptr) return std::nullopt;
      return std::string(d.storage_class);
    }
  }
  return std::nullopt;
}

std::optional<at::ScalarType> DtypeFromStorageClass(std::string_view name) {
  for (const DtypeNames& d : kDtypes) {
    if (d.storage_class != nullptr && name == d.storage_class) return d.dtype;
  }
  return std::nullopt;
}

std::optional<std::string> DtypeName(at::ScalarType dtype) {
  for (const DtypeNames& d : kDtypes) {
    if (d.dtype == dtype) return std::string(d.name);
  }
  return std::nullopt;
}

std::optional<at::ScalarType> DtypeFromName(std::string_view name) {
  if (name.substr(0, 6) == "torch.") name.remove_prefix(6);
  for (const DtypeNames& d : kDtypes) {
    if (name == d.name) return d.dtype;
  }
  for (const auto& [alias, dtype] : kDtypeAliases) {
    if (name == alias) return dtype;
  }
  return std::nullopt;
}

}  // namespace fabric
