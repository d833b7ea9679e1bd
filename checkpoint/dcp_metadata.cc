#include "checkpoint/dcp_metadata.h"

#include <limits>
#include <memory>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/pickle_reader.h"
#include "checkpoint/pickle_writer.h"

namespace fabric::dcp {
namespace {

constexpr char kMetadataModule[] = "torch.distributed.checkpoint.metadata";
constexpr char kFilesystemModule[] = "torch.distributed.checkpoint.filesystem";
constexpr char kItemCrcAttribute[] = "fabric_crc32";  // see StorageInfo::item_crc32

// Whether a box of `sizes` elements of `item` bytes stays below 2^63 bytes, as
// torch requires, so that element and byte counts never overflow int64.
bool FitsInInt64(const std::vector<int64_t>& sizes, int64_t item) {
  __int128 n = item;
  for (int64_t s : sizes) {
    n *= s;
    if (n > std::numeric_limits<int64_t>::max()) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Writing: the object shapes pickle.dump produces for these classes.

Value NewDict() { return Value::MakeDict(); }

// Appends without the key lookup Dict::Set does: keys here are unique by
// construction, so hashing each Object key (storage_data's MetadataIndex) to
// look for a duplicate would be wasted work.
void Append(Value& dict, Value key, Value value) {
  dict.as_dict().mutable_items().emplace_back(std::move(key), std::move(value));
}

// A dataclass instance: cls.__new__(cls) (NEWOBJ with no args), then
// __dict__.update(state) (BUILD) when it has state.
Value Dataclass(const char* module, const char* name, std::optional<Value> state) {
  Object o;
  o.callable = Global{module, name};
  o.args = std::make_shared<std::vector<Value>>();
  o.newobj = true;
  if (state) o.state = std::make_shared<Value>(*std::move(state));
  return Value(std::move(o));
}

// callable(*args) (REDUCE).
Value Call(const char* module, const char* name, std::vector<Value> args) {
  Object o;
  o.callable = Global{module, name};
  o.args = std::make_shared<std::vector<Value>>(std::move(args));
  return Value(std::move(o));
}

Value IntTuple(const std::vector<int64_t>& v) {
  std::vector<Value> items;
  items.reserve(v.size());
  for (int64_t x : v) items.emplace_back(x);
  return Value::Tuple(std::move(items));
}

// torch.Size((a, b, ...)), as torch.Size.__reduce__ writes it.
Value TorchSize(const std::vector<int64_t>& v) { return Call("torch", "Size", {IntTuple(v)}); }

Value OptString(const std::optional<std::string>& s) { return s ? Value(*s) : Value(); }

// pathlib.PosixPath(*parts), as PosixPath.__reduce__ writes it on Python 3.11.
Value PosixPath(const std::string& path) {
  std::vector<Value> parts;
  size_t i = 0;
  if (!path.empty() && path[0] == '/') {
    parts.emplace_back("/");
    i = 1;
  }
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i && path.compare(i, j - i, ".") != 0) parts.emplace_back(path.substr(i, j - i));
    i = j + 1;
  }
  return Call("pathlib", "PosixPath", std::move(parts));
}

absl::StatusOr<Value> PropertiesToValue(const TensorProperties& p) {
  std::optional<std::string> dtype = DtypeName(p.dtype);
  if (!dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype ", c10::toString(p.dtype), " has no torch.<name> in Python"));
  }
  std::string layout = p.layout.empty() ? "torch.strided" : p.layout;
  Value state = Value::Tuple({
      Value(Global{"torch", *dtype}),
      Call("torch.serialization", "_get_layout", {Value(layout)}),
      Value(p.requires_grad),
      Call(kMetadataModule, "_MEM_FORMAT_ENCODING", {Value(static_cast<int>(p.memory_format))}),
      Value(p.pin_memory),
  });
  return Dataclass(kMetadataModule, "TensorProperties", std::move(state));
}

Value ChunkToValue(const ChunkStorageMetadata& c) {
  Value state = NewDict();
  Append(state, "offsets", TorchSize(c.offsets));
  Append(state, "sizes", TorchSize(c.sizes));
  return Dataclass(kMetadataModule, "ChunkStorageMetadata", std::move(state));
}

absl::StatusOr<Value> StorageMetadataToValue(const StorageMetadata& md) {
  if (std::holds_alternative<BytesStorageMetadata>(md)) {
    return Dataclass(kMetadataModule, "BytesStorageMetadata", std::nullopt);
  }
  const auto& t = std::get<TensorStorageMetadata>(md);
  FABRIC_ASSIGN_OR_RETURN(Value props, PropertiesToValue(t.properties));
  std::vector<Value> chunks;
  chunks.reserve(t.chunks.size());
  for (const auto& c : t.chunks) chunks.push_back(ChunkToValue(c));
  Value state = NewDict();
  Append(state, "properties", std::move(props));
  Append(state, "size", TorchSize(t.size));
  Append(state, "chunks", Value::List(std::move(chunks)));
  return Dataclass(kMetadataModule, "TensorStorageMetadata", std::move(state));
}

Value IndexToValue(const MetadataIndex& index) {
  // MetadataIndex.__init__ sets fqn, index, then offset only when given.
  Value state = NewDict();
  Append(state, "fqn", index.fqn);
  Append(state, "index", index.index ? Value(*index.index) : Value());
  if (index.offset) Append(state, "offset", TorchSize(*index.offset));
  return Dataclass(kMetadataModule, "MetadataIndex", std::move(state));
}

Value StorageInfoToValue(const StorageInfo& info) {
  // _StorageInfo.__getstate__ drops None fields.
  Value state = NewDict();
  Append(state, "relative_path", info.relative_path);
  Append(state, "offset", info.offset);
  Append(state, "length", info.length);
  if (info.transform_descriptors) {
    std::vector<Value> items(info.transform_descriptors->begin(),
                             info.transform_descriptors->end());
    Append(state, "transform_descriptors", Value::List(std::move(items)));
  }
  if (info.item_crc32) Append(state, kItemCrcAttribute, static_cast<int64_t>(*info.item_crc32));
  return Dataclass(kFilesystemModule, "_StorageInfo", std::move(state));
}

Value StorageMetaToValue(const StorageMeta& m) {
  Value state = NewDict();
  Append(state, "checkpoint_id", m.checkpoint_id ? PosixPath(*m.checkpoint_id) : Value());
  Append(state, "save_id", OptString(m.save_id));
  Append(state, "load_id", OptString(m.load_id));
  std::vector<Value> modules(m.modules.begin(), m.modules.end());
  Append(state, "modules", Value::List(std::move(modules)));
  return Dataclass(kMetadataModule, "StorageMeta", std::move(state));
}

Value PathToValue(const ObjectPath& path) {
  std::vector<Value> items;
  items.reserve(path.size());
  for (const PathItem& p : path) {
    if (const auto* s = std::get_if<std::string>(&p)) {
      items.emplace_back(*s);
    } else {
      items.emplace_back(std::get<int64_t>(p));
    }
  }
  return Value::Tuple(std::move(items));
}

// ---------------------------------------------------------------------------
// Reading. Lenient where Python versions differ, strict about types.

class Parser {
 public:
  explicit Parser(std::string what) : what_(std::move(what)) {}

  absl::Status Error(const std::string& where, const std::string& msg) const {
    return absl::DataLossError(absl::StrCat(what_, ": ", where, ": ", msg));
  }

  // The instance dict of a dataclass object of class `name`.
  absl::StatusOr<const Dict*> DataclassState(const Value& v, const std::string& name,
                                              const std::string& where) const {
    if (!v.is_object()) {
      return Error(where, absl::StrCat("expected a ", name, " object, found ", v.kind_name()));
    }
    const Object& o = v.as_object();
    if (o.callable.name != name) {
      return Error(where,
                   absl::StrCat("expected a ", name, " object, found ", o.callable.ToString()));
    }
    static const Dict kEmpty;
    if (!o.state || o.state->is_none()) return &kEmpty;
    if (o.state->is_dict()) return &o.state->as_dict();
    // (dict_state, slots_state) as copyreg writes for classes with __slots__.
    if (o.state->is_tuple() && o.state->items().size() == 2 && o.state->items()[0].is_dict()) {
      return &o.state->items()[0].as_dict();
    }
    return Error(where, absl::StrCat(name, " has an unexpected state (", o.state->kind_name(),
                                     ")"));
  }

  // A torch.Size, tuple or list of ints.
  absl::StatusOr<std::vector<int64_t>> IntList(const Value& v, const std::string& where) const {
    const Value* seq = &v;
    if (v.is_object()) {
      const Object& o = v.as_object();
      if (o.callable.name != "Size" || o.args->size() != 1) {
        return Error(where, absl::StrCat("expected a torch.Size, found ", o.callable.ToString()));
      }
      seq = &(*o.args)[0];
    }
    if (!seq->is_sequence()) {
      return Error(where, absl::StrCat("expected a torch.Size, found ", seq->kind_name()));
    }
    std::vector<int64_t> out;
    out.reserve(seq->items().size());
    for (const Value& x : seq->items()) {
      if (!x.is_int()) {
        return Error(where, absl::StrCat("expected ints in a torch.Size, found ", x.kind_name()));
      }
      out.push_back(x.as_int());
    }
    return out;
  }

  absl::StatusOr<std::optional<std::string>> OptString(const Dict& d, const char* key,
                                                       const std::string& where) const {
    const Value* v = d.Find(key);
    if (!v || v->is_none()) return std::optional<std::string>();
    if (!v->is_string()) {
      return Error(where, absl::StrCat("'", key, "' is a ", v->kind_name(), ", not a string"));
    }
    return std::optional<std::string>(v->as_string());
  }

  absl::StatusOr<int64_t> Int(const Dict& d, const char* key, const std::string& where) const {
    const Value* v = d.Find(key);
    if (!v || !v->is_int()) {
      return Error(where, absl::StrCat("'", key, "' is ", v ? v->kind_name() : "missing",
                                       ", not an int"));
    }
    return v->as_int();
  }

  absl::StatusOr<bool> Bool(const Value& v, const std::string& where) const {
    if (v.is_bool()) return v.as_bool();
    if (v.is_int()) return v.as_int() != 0;
    return Error(where, absl::StrCat("expected a bool, found ", v.kind_name()));
  }

  absl::StatusOr<at::ScalarType> Dtype(const Value& v, const std::string& where) const {
    if (v.is_global() && v.as_global().module == "torch") {
      if (std::optional<at::ScalarType> t = DtypeFromName(v.as_global().name)) return *t;
    }
    return Error(where, absl::StrCat("unsupported dtype ", v.DebugString()));
  }

  absl::StatusOr<std::string> Layout(const Value& v, const std::string& where) const {
    // torch.serialization._get_layout("torch.strided"), or a bare global.
    if (v.is_object() && v.as_object().callable.name == "_get_layout" &&
        v.as_object().args->size() == 1 && (*v.as_object().args)[0].is_string()) {
      return (*v.as_object().args)[0].as_string();
    }
    if (v.is_global()) return v.as_global().ToString();
    if (v.is_string()) return v.as_string();
    return Error(where, absl::StrCat("unsupported layout ", v.DebugString()));
  }

  absl::StatusOr<MemoryFormat> MemFormat(const Value& v, const std::string& where) const {
    const Value* code = &v;
    if (v.is_object() && v.as_object().callable.name == "_MEM_FORMAT_ENCODING" &&
        v.as_object().args->size() == 1) {
      code = &(*v.as_object().args)[0];
    }
    if (code->is_int() && code->as_int() >= 0 && code->as_int() <= 2) {
      return static_cast<MemoryFormat>(code->as_int());
    }
    return Error(where, absl::StrCat("unsupported memory format ", v.DebugString()));
  }

  absl::StatusOr<TensorProperties> Properties(const Value& v, const std::string& where) const {
    if (!v.is_object() || v.as_object().callable.name != "TensorProperties") {
      return Error(where, absl::StrCat("expected TensorProperties, found ", v.DebugString()));
    }
    const Object& o = v.as_object();
    TensorProperties p;
    if (o.state && o.state->is_tuple()) {
      // __getstate__: (dtype, layout, requires_grad, memory format code, pin_memory)
      const auto& t = o.state->items();
      if (t.size() != 5) {
        return Error(where, absl::StrCat("TensorProperties state has ", t.size(),
                                         " fields, expected 5"));
      }
      FABRIC_ASSIGN_OR_RETURN(at::ScalarType dtype, Dtype(t[0], where));
      FABRIC_ASSIGN_OR_RETURN(std::string layout, Layout(t[1], where));
      FABRIC_ASSIGN_OR_RETURN(bool grad, Bool(t[2], where));
      FABRIC_ASSIGN_OR_RETURN(MemoryFormat mf, MemFormat(t[3], where));
      FABRIC_ASSIGN_OR_RETURN(bool pin, Bool(t[4], where));
      p.dtype = dtype;
      p.layout = std::move(layout);
      p.requires_grad = grad;
      p.memory_format = mf;
      p.pin_memory = pin;
      return p;
    }
    // Older torch pickled the instance dict.
    FABRIC_ASSIGN_OR_RETURN(const Dict* d, DataclassState(v, "TensorProperties", where));
    const Value* dtype = d->Find("dtype");
    if (!dtype) return Error(where, "TensorProperties has no dtype");
    FABRIC_ASSIGN_OR_RETURN(at::ScalarType dt, Dtype(*dtype, where));
    p.dtype = dt;
    if (const Value* l = d->Find("layout")) {
      FABRIC_ASSIGN_OR_RETURN(std::string layout, Layout(*l, where));
      p.layout = std::move(layout);
    }
    if (const Value* g = d->Find("requires_grad")) {
      FABRIC_ASSIGN_OR_RETURN(bool b, Bool(*g, where));
      p.requires_grad = b;
    }
    if (const Value* pin = d->Find("pin_memory")) {
      FABRIC_ASSIGN_OR_RETURN(bool b, Bool(*pin, where));
      p.pin_memory = b;
    }
    return p;
  }

  absl::StatusOr<ChunkStorageMetadata> Chunk(const Value& v, const std::string& where) const {
    FABRIC_ASSIGN_OR_RETURN(const Dict* d, DataclassState(v, "ChunkStorageMetadata", where));
    const Value* offsets = d->Find("offsets");
    const Value* sizes = d->Find("sizes");
    if (!offsets || !sizes) return Error(where, "chunk without offsets or sizes");
    ChunkStorageMetadata c;
    FABRIC_ASSIGN_OR_RETURN(std::vector<int64_t> o, IntList(*offsets, where));
    FABRIC_ASSIGN_OR_RETURN(std::vector<int64_t> s, IntList(*sizes, where));
    if (o.size() != s.size()) return Error(where, "chunk offsets and sizes differ in rank");
    for (int64_t x : s) {
      if (x < 0) return Error(where, "chunk with a negative size");
    }
    if (!FitsInInt64(s, 1)) return Error(where, "chunk of 2^63 elements or more");
    c.offsets = std::move(o);
    c.sizes = std::move(s);
    return c;
  }

  absl::StatusOr<StorageMetadata> Storage(const Value& v, const std::string& fqn) const {
    const std::string where = absl::StrCat("state_dict_metadata['", fqn, "']");
    if (!v.is_object()) {
      return Error(where, absl::StrCat("expected a storage metadata object, found ",
                                       v.kind_name()));
    }
    const std::string& cls = v.as_object().callable.name;
    if (cls == "BytesStorageMetadata") return StorageMetadata(BytesStorageMetadata{});
    FABRIC_ASSIGN_OR_RETURN(const Dict* d, DataclassState(v, "TensorStorageMetadata", where));
    TensorStorageMetadata t;
    const Value* props = d->Find("properties");
    const Value* size = d->Find("size");
    const Value* chunks = d->Find("chunks");
    if (!props || !size || !chunks) {
      return Error(where, "TensorStorageMetadata needs properties, size and chunks");
    }
    FABRIC_ASSIGN_OR_RETURN(TensorProperties p, Properties(*props, where));
    t.properties = std::move(p);
    FABRIC_ASSIGN_OR_RETURN(std::vector<int64_t> s, IntList(*size, where));
    t.size = std::move(s);
    for (int64_t x : t.size) {
      if (x < 0) return Error(where, "negative tensor size");
    }
    if (!FitsInInt64(t.size, static_cast<int64_t>(c10::elementSize(t.properties.dtype)))) {
      return Error(where, "tensor of 2^63 bytes or more");
    }
    if (!chunks->is_sequence()) return Error(where, "chunks is not a list");
    for (const Value& c : chunks->items()) {
      FABRIC_ASSIGN_OR_RETURN(ChunkStorageMetadata chunk, Chunk(c, where));
      if (chunk.offsets.size() != t.size.size()) {
        return Error(where, absl::StrCat("a chunk has rank ", chunk.offsets.size(),
                                         " but the tensor has rank ", t.size.size()));
      }
      t.chunks.push_back(std::move(chunk));
    }
    return StorageMetadata(std::move(t));
  }

  absl::StatusOr<MetadataIndex> Index(const Value& v) const {
    FABRIC_ASSIGN_OR_RETURN(const Dict* d, DataclassState(v, "MetadataIndex", "storage_data key"));
    MetadataIndex index;
    const Value* fqn = d->Find("fqn");
    if (!fqn || !fqn->is_string()) return Error("storage_data key", "MetadataIndex without fqn");
    index.fqn = fqn->as_string();
    const std::string where = absl::StrCat("storage_data['", index.fqn, "']");
    if (const Value* off = d->Find("offset"); off && !off->is_none()) {
      FABRIC_ASSIGN_OR_RETURN(std::vector<int64_t> o, IntList(*off, where));
      index.offset = std::move(o);
    }
    if (const Value* i = d->Find("index"); i && !i->is_none()) {
      if (!i->is_int()) return Error(where, "MetadataIndex.index is not an int");
      index.index = i->as_int();
    }
    return index;
  }

  absl::StatusOr<StorageInfo> Info(const Value& v, const std::string& fqn) const {
    const std::string where = absl::StrCat("storage_data['", fqn, "']");
    FABRIC_ASSIGN_OR_RETURN(const Dict* d, DataclassState(v, "_StorageInfo", where));
    StorageInfo info;
    const Value* path = d->Find("relative_path");
    if (!path || !path->is_string()) return Error(where, "_StorageInfo without relative_path");
    info.relative_path = path->as_string();
    FABRIC_ASSIGN_OR_RETURN(int64_t offset, Int(*d, "offset", where));
    FABRIC_ASSIGN_OR_RETURN(int64_t length, Int(*d, "length", where));
    if (offset < 0 || length < 0) return Error(where, "negative offset or length");
    info.offset = offset;
    info.length = length;
    if (const Value* t = d->Find("transform_descriptors"); t && !t->is_none()) {
      if (!t->is_sequence()) return Error(where, "transform_descriptors is not a list");
      std::vector<std::string> descs;
      for (const Value& x : t->items()) {
        if (!x.is_string()) return Error(where, "transform_descriptors holds a non-string");
        descs.push_back(x.as_string());
      }
      info.transform_descriptors = std::move(descs);
    }
    if (const Value* c = d->Find(kItemCrcAttribute); c && !c->is_none()) {
      if (!c->is_int() || c->as_int() < 0 || c->as_int() > 0xffffffffLL) {
        return Error(where, absl::StrCat(kItemCrcAttribute, " is not a 32-bit unsigned int"));
      }
      info.item_crc32 = static_cast<uint32_t>(c->as_int());
    }
    return info;
  }

  absl::StatusOr<std::optional<std::string>> Path(const Value& v) const {
    if (v.is_none()) return std::optional<std::string>();
    if (v.is_string()) return std::optional<std::string>(v.as_string());
    if (v.is_object() && v.as_object().callable.module == "pathlib") {
      std::string out;
      for (const Value& part : *v.as_object().args) {
        if (!part.is_string()) return Error("storage_meta", "a path part is not a string");
        const std::string& s = part.as_string();
        if (!out.empty() && out.back() != '/') out += '/';
        out += s;
      }
      return std::optional<std::string>(out);
    }
    return Error("storage_meta", absl::StrCat("unsupported checkpoint_id ", v.DebugString()));
  }

  absl::StatusOr<StorageMeta> Meta(const Value& v) const {
    FABRIC_ASSIGN_OR_RETURN(const Dict* d, DataclassState(v, "StorageMeta", "storage_meta"));
    StorageMeta m;
    if (const Value* id = d->Find("checkpoint_id")) {
      FABRIC_ASSIGN_OR_RETURN(std::optional<std::string> p, Path(*id));
      m.checkpoint_id = std::move(p);
    }
    FABRIC_ASSIGN_OR_RETURN(std::optional<std::string> save,
                            OptString(*d, "save_id", "storage_meta"));
    FABRIC_ASSIGN_OR_RETURN(std::optional<std::string> load,
                            OptString(*d, "load_id", "storage_meta"));
    m.save_id = std::move(save);
    m.load_id = std::move(load);
    if (const Value* mods = d->Find("modules"); mods && mods->is_sequence()) {
      for (const Value& x : mods->items()) {
        if (!x.is_string()) return Error("storage_meta", "modules holds a non-string");
        m.modules.push_back(x.as_string());
      }
    }
    return m;
  }

  // planner_data as flatten_state_dict's mapping, or nullopt if it is not one.
  std::optional<std::vector<std::pair<std::string, ObjectPath>>> Mapping(const Value& v) const {
    if (!v.is_dict()) return std::nullopt;
    std::vector<std::pair<std::string, ObjectPath>> out;
    out.reserve(v.as_dict().size());
    for (const auto& [k, path] : v.as_dict()) {
      if (!k.is_string() || !path.is_sequence()) return std::nullopt;
      ObjectPath p;
      for (const Value& item : path.items()) {
        if (item.is_string()) {
          p.emplace_back(item.as_string());
        } else if (item.is_int()) {
          p.emplace_back(item.as_int());
        } else {
          return std::nullopt;
        }
      }
      out.emplace_back(k.as_string(), std::move(p));
    }
    return out;
  }

 private:
  std::string what_;
};

}  // namespace

std::string RankFileName(int rank, int file_index) {
  return absl::StrCat("__", rank, "_", file_index, ".distcp");
}

int64_t ChunkStorageMetadata::numel() const {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

const StorageMetadata* Metadata::Find(const std::string& fqn) const {
  for (const auto& [k, v] : state_dict_metadata) {
    if (k == fqn) return &v;
  }
  return nullptr;
}

const StorageInfo* Metadata::FindStorage(const MetadataIndex& index) const {
  for (const auto& [k, v] : storage_data) {
    if (k == index) return &v;
  }
  return nullptr;
}

absl::StatusOr<Value> ToValue(const Metadata& metadata) {
  Value sdm = NewDict();
  for (const auto& [fqn, md] : metadata.state_dict_metadata) {
    FABRIC_ASSIGN_OR_RETURN_PREFIX(Value v, StorageMetadataToValue(md), "key '", fqn, "': ");
    Append(sdm, fqn, std::move(v));
  }
  Value planner;
  if (metadata.planner_data_other) {
    planner = *metadata.planner_data_other;
  } else if (metadata.planner_data) {
    planner = NewDict();
    for (const auto& [fqn, path] : *metadata.planner_data) Append(planner, fqn, PathToValue(path));
  }
  Value storage = NewDict();
  for (const auto& [index, info] : metadata.storage_data) {
    Append(storage, IndexToValue(index), StorageInfoToValue(info));
  }
  Value state = NewDict();
  Append(state, "state_dict_metadata", std::move(sdm));
  Append(state, "planner_data", std::move(planner));
  Append(state, "storage_data", std::move(storage));
  Append(state, "storage_meta",
         metadata.storage_meta ? StorageMetaToValue(*metadata.storage_meta) : Value());
  Append(state, "version", OptString(metadata.version));
  return Dataclass(kMetadataModule, "Metadata", std::move(state));
}

absl::StatusOr<Metadata> FromValue(const Value& value, const std::string& what) {
  Parser p(what);
  FABRIC_ASSIGN_OR_RETURN(const Dict* d, p.DataclassState(value, "Metadata", "root"));
  Metadata md;
  const Value* sdm = d->Find("state_dict_metadata");
  if (!sdm || !sdm->is_dict()) return p.Error("root", "state_dict_metadata is not a dict");
  md.state_dict_metadata.reserve(sdm->as_dict().size());
  for (const auto& [k, v] : sdm->as_dict()) {
    if (!k.is_string()) return p.Error("state_dict_metadata", "a key is not a string");
    FABRIC_ASSIGN_OR_RETURN(StorageMetadata s, p.Storage(v, k.as_string()));
    md.state_dict_metadata.emplace_back(k.as_string(), std::move(s));
  }
  if (const Value* planner = d->Find("planner_data"); planner && !planner->is_none()) {
    md.planner_data = p.Mapping(*planner);
    if (!md.planner_data) md.planner_data_other = *planner;
  }
  if (const Value* storage = d->Find("storage_data"); storage && !storage->is_none()) {
    if (!storage->is_dict()) return p.Error("root", "storage_data is not a dict");
    md.storage_data.reserve(storage->as_dict().size());
    for (const auto& [k, v] : storage->as_dict()) {
      FABRIC_ASSIGN_OR_RETURN(MetadataIndex index, p.Index(k));
      FABRIC_ASSIGN_OR_RETURN(StorageInfo info, p.Info(v, index.fqn));
      md.storage_data.emplace_back(std::move(index), std::move(info));
    }
  }
  if (const Value* meta = d->Find("storage_meta"); meta && !meta->is_none()) {
    FABRIC_ASSIGN_OR_RETURN(StorageMeta m, p.Meta(*meta));
    md.storage_meta = std::move(m);
  }
  FABRIC_ASSIGN_OR_RETURN(std::optional<std::string> version, p.OptString(*d, "version", "root"));
  md.version = std::move(version);
  return md;
}

absl::StatusOr<std::string> SerializeMetadata(const Metadata& metadata) {
  FABRIC_ASSIGN_OR_RETURN(Value v, ToValue(metadata));
  return pickle::Pickle(v, /*protocol=*/4);
}

absl::StatusOr<Metadata> ParseMetadata(std::string_view bytes, const std::string& what) {
  FABRIC_ASSIGN_OR_RETURN(Value v, pickle::Unpickle(bytes, what));
  return FromValue(v, what);
}

}  // namespace fabric::dcp
