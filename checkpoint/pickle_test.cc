#include "checkpoint/pickle_reader.h"
#include "checkpoint/pickle_writer.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace fabric::pickle {
namespace {

using namespace std::string_literals;  // "..."s keeps embedded NULs

// Set by main() from the test's args: the venv's Python and the helper script.
std::string g_python;
std::string g_script;

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

// Runs the helper script; returns its exit status and output.
int RunPython(const std::string& args, std::string* output) {
  const std::string cmd = absl::StrCat("'", g_python, "' '", g_script, "' ", args, " 2>&1");
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  size_t n;
  output->clear();
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output->append(buf, n);
  return pclose(pipe);
}

Value RoundTrip(const Value& v, int protocol = 2) {
  absl::StatusOr<std::string> bytes = Pickle(v, protocol);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return Value();
  absl::StatusOr<Value> back = Unpickle(*bytes, "roundtrip");
  EXPECT_TRUE(back.ok()) << back.status();
  return back.ok() ? *back : Value();
}

TensorRef MakeRef(std::string key, at::ScalarType dtype, int64_t numel, int64_t offset,
                  std::vector<int64_t> sizes, std::vector<int64_t> strides,
                  bool requires_grad = false) {
  TensorRef r;
  r.storage_key = std::move(key);
  r.dtype = dtype;
  r.storage_numel = numel;
  r.storage_offset = offset;
  r.sizes = std::move(sizes);
  r.strides = std::move(strides);
  r.requires_grad = requires_grad;
  return r;
}

// The C++ twin of structure() in testdata/pickle_interop.py.
Value Structure() {
  std::vector<Value> ints;
  for (int64_t i : {int64_t{0}, int64_t{1}, int64_t{-1}, int64_t{255}, int64_t{256},
                    int64_t{65535}, int64_t{65536}, int64_t{-65536}, int64_t{2147483647},
                    int64_t{-2147483648LL}, int64_t{2147483648LL}, int64_t{-2147483649LL},
                    int64_t{1} << 40, -(int64_t{1} << 40),
                    std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
                    int64_t{1000000000000000}}) {
    ints.push_back(i);
  }
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<Value> floats;
  for (double d : {0.0, -0.0, 1.5, -2.25, 1e-300, 1e300, 3.141592653589793, inf, -inf}) {
    floats.push_back(d);
  }
  std::string all_bytes;
  for (int rep = 0; rep < 2; ++rep) {
    for (int i = 0; i < 256; ++i) all_bytes.push_back(static_cast<char>(i));
  }
  std::vector<Value> big_list;
  for (int i = 0; i < 2500; ++i) big_list.push_back(i);
  Dict big_dict;
  for (int i = 0; i < 2500; ++i) big_dict.Set(absl::StrCat("k", i), i);
  Value shared = Value::List({1, 2});

  Dict d;
  d.Set("none", Value());
  d.Set("t", true);
  d.Set("f", false);
  d.Set("ints", Value::List(ints));
  d.Set("floats", Value::List(floats));
  d.Set("strings", Value::List({"", "ascii", "h\u00e9llo w\u00f6rld", "\u65e5\u672c\u8a9e",
                                "emoji \U0001F600", std::string(300, 'x'), "new\nline"}));
  d.Set("bytes", Value::List({Value::Bytes(""), Value::Bytes(std::string("\x00\x01\xff", 3)),
                              Value::Bytes(all_bytes)}));
  d.Set("tuples", Value::List({Value::Tuple(), Value::Tuple({1}), Value::Tuple({1, 2}),
                               Value::Tuple({1, 2, 3}), Value::Tuple({1, 2, 3, 4, "five"})}));
  d.Set("nested",
        Value(Dict{{"a", Value::List({Value(Dict{
                             {"b", Value::Tuple({1, Value::List({2, Value(Dict{{"c", Value()}})})})}})})}}));
  d.Set(7, "int key");
  d.Set(-3, Value::List({1.0}));
  d.Set("big_list", Value::List(big_list));
  d.Set("big_dict", Value(big_dict));
  d.Set("od", Value(Dict{{"z", 1}, {"a", 2}}));
  d.Set("shared", Value::List({shared, shared}));
  d.Set("empty", Value::List({Value::List(), Value::MakeDict(), Value::Tuple()}));
  return Value(std::move(d));
}

std::vector<std::string> KeyStrings(const Dict& d) {
  std::vector<std::string> out;
  for (const auto& kv : d) out.push_back(kv.first.DebugString());
  return out;
}

// ---------------------------------------------------------------------------
// Round trips through our own writer and reader.

TEST(PickleTest, ScalarsRoundTrip) {
  for (int protocol : {2, 3, 4, 5}) {
    for (int64_t i : {int64_t{0}, int64_t{255}, int64_t{256}, int64_t{65535}, int64_t{65536},
                      int64_t{-1}, int64_t{-129}, int64_t{2147483647}, int64_t{2147483648LL},
                      int64_t{-2147483648LL}, int64_t{-2147483649LL}, int64_t{1} << 55,
                      std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()}) {
      EXPECT_EQ(RoundTrip(Value(i), protocol), Value(i)) << i;
    }
    for (double d : {0.0, -0.0, 0.1, -1e-310, 1e308, std::numeric_limits<double>::infinity()}) {
      Value back = RoundTrip(Value(d), protocol);
      ASSERT_TRUE(back.is_float());
      EXPECT_EQ(back.as_float(), d);
      EXPECT_EQ(std::signbit(back.as_float()), std::signbit(d));
    }
    EXPECT_TRUE(std::isnan(RoundTrip(Value(std::nan("")), protocol).as_float()));
    EXPECT_EQ(RoundTrip(Value(), protocol), Value());
    EXPECT_EQ(RoundTrip(Value(true), protocol), Value(true));
    EXPECT_EQ(RoundTrip(Value(false), protocol), Value(false));
    for (std::string s : {std::string(), std::string("abc"), std::string("\xc3\xa9\xe2\x82\xac"),
                          std::string(255, 'a'), std::string(256, 'b'), std::string(70000, 'c')}) {
      EXPECT_EQ(RoundTrip(Value(s), protocol), Value(s));
      EXPECT_EQ(RoundTrip(Value::Bytes(s + std::string(1, '\0')), protocol),
                Value::Bytes(s + std::string(1, '\0')));
    }
    EXPECT_EQ(RoundTrip(Value(Global{"torch", "bfloat16"}), protocol),
              Value(Global{"torch", "bfloat16"}));
  }
}

TEST(PickleTest, ContainersRoundTrip) {
  Value v = Structure();
  for (int protocol : {2, 3, 4, 5}) {
    Value back = RoundTrip(v, protocol);
    EXPECT_EQ(back, v) << protocol;
    ASSERT_TRUE(back.is_dict());
    EXPECT_EQ(KeyStrings(back.as_dict()), KeyStrings(v.as_dict()));  // order kept
  }
}

TEST(PickleTest, BatchesLikePython) {
  std::vector<Value> items(2001, Value(1));
  absl::StatusOr<std::string> bytes = Pickle(Value::List(items));
  ASSERT_TRUE(bytes.ok());
  // 2001 items: two MARK...APPENDS batches of 1000, then one APPEND.
  EXPECT_EQ(std::count(bytes->begin(), bytes->end(), 'e'), 2);
  EXPECT_EQ(std::count(bytes->begin(), bytes->end(), 'a'), 1);
  // The exact bytes of a small value, as Python's pickle.dumps(..., protocol=2)
  // would write them apart from memo PUTs.
  absl::StatusOr<std::string> small =
      Pickle(Value(Dict{{"a", Value::Tuple({1, -1})}, {"b", Value::List({true})}}));
  ASSERT_TRUE(small.ok());
  static const char kWant[] =
      "\x80\x02}(X\x01\x00\x00\x00" "aK\x01J\xff\xff\xff\xff\x86"
      "X\x01\x00\x00\x00" "b]\x88" "au.";
  EXPECT_EQ(*small, std::string(kWant, sizeof(kWant) - 1));
}

TEST(PickleTest, ObjectsRoundTrip) {
  Object reduce;
  reduce.callable = Global{"some.module", "Thing"};
  reduce.args->push_back(Value(1));
  reduce.args->push_back(Value("x"));
  Object newobj;
  newobj.callable = Global{"torch.distributed.checkpoint.metadata", "Metadata"};
  newobj.newobj = true;
  newobj.state = std::make_shared<Value>(Dict{{"planner_data", Value()}, {"n", 3}});
  Object list_like;
  list_like.callable = Global{"mod", "MyList"};
  list_like.list_items = std::make_shared<std::vector<Value>>(std::vector<Value>{1, 2, 3});
  Object dict_like;
  dict_like.callable = Global{"mod", "MyDict"};
  dict_like.dict_items = std::make_shared<std::vector<std::pair<Value, Value>>>();
  dict_like.dict_items->emplace_back(Value("k"), Value(Object(reduce)));
  Object pid;
  pid.callable = PersistentIdCallable();
  pid.args->push_back(Value::Tuple({"storage", Global{"torch", "FloatStorage"}, "9", "cpu", 4}));
  Value v = Value::List({Value(reduce), Value(newobj), Value(list_like), Value(dict_like),
                         Value(pid)});
  for (int protocol : {2, 5}) {
    Value back = RoundTrip(v, protocol);
    EXPECT_EQ(back, v) << back.DebugString();
    ASSERT_TRUE(back.is_list());
    EXPECT_TRUE(back.items()[1].as_object().newobj);
    EXPECT_FALSE(back.items()[0].as_object().newobj);
  }
}

TEST(PickleTest, TensorRefsRoundTrip) {
  Value v(Dict{
      {"a", MakeRef("0", at::kFloat, 24, 6, {3, 3}, {6, 2})},
      {"b", MakeRef("1", at::kBFloat16, 4, 0, {2, 2}, {2, 1}, true)},
      {"c", MakeRef("2", at::kUInt16, 5, 0, {5}, {1})},  // written as _rebuild_tensor_v3
      {"d", MakeRef("3", at::kFloat8_e4m3fn, 8, 0, {2, 4}, {4, 1})},
      {"s", MakeRef("4", at::kLong, 1, 0, {}, {})},
      {"e", MakeRef("5", at::kDouble, 0, 0, {0, 3}, {3, 1})},
  });
  for (int protocol : {2, 4}) {
    Value back = RoundTrip(v, protocol);
    EXPECT_EQ(back, v) << back.DebugString();
  }
  absl::StatusOr<std::string> bytes = Pickle(v);
  ASSERT_TRUE(bytes.ok());
  EXPECT_NE(bytes->find("torch._utils\n_rebuild_tensor_v2\n"), std::string::npos);
  EXPECT_NE(bytes->find("torch._utils\n_rebuild_tensor_v3\n"), std::string::npos);
  EXPECT_NE(bytes->find("torch.storage\nUntypedStorage\n"), std::string::npos);
  EXPECT_NE(bytes->find("torch\nFloatStorage\n"), std::string::npos);
  EXPECT_NE(bytes->find("collections\nOrderedDict\n"), std::string::npos);
  // Globals are written once and then fetched from the memo.
  size_t count = 0;
  for (size_t p = bytes->find("_rebuild_tensor_v2"); p != std::string::npos;
       p = bytes->find("_rebuild_tensor_v2", p + 1)) {
    ++count;
  }
  EXPECT_EQ(count, 1u);
}

TEST(PickleTest, TensorsUseTheStorageCallback) {
  at::Tensor base = at::arange(12, at::kFloat);
  at::Tensor view = base.view({3, 4}).slice(1, 1, 3);  // offset 1, sizes (3,2), strides (4,1)
  at::Tensor other = at::zeros({2}, at::kInt);
  std::map<const void*, std::string> keys;
  PickleOptions options;
  options.storage_id = [&](const at::Tensor& t) -> absl::StatusOr<StorageId> {
    auto [it, inserted] = keys.emplace(t.storage().unsafeGetStorageImpl(), std::to_string(keys.size()));
    return StorageId{it->second, "cpu",
                     static_cast<int64_t>(t.storage().nbytes() / t.element_size())};
  };
  Value v(Dict{{"base", base}, {"view", view}, {"other", other}});
  absl::StatusOr<std::string> bytes = Pickle(v, options);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<Value> back = Unpickle(*bytes, "tensors");
  ASSERT_TRUE(back.ok()) << back.status();
  const Dict& d = back->as_dict();
  EXPECT_EQ(*d.Find("base"), Value(MakeRef("0", at::kFloat, 12, 0, {12}, {1})));
  EXPECT_EQ(*d.Find("view"), Value(MakeRef("0", at::kFloat, 12, 1, {3, 2}, {4, 1})));
  EXPECT_EQ(*d.Find("other"), Value(MakeRef("1", at::kInt, 2, 0, {2}, {1})));

  // The callback can also be passed directly.
  absl::StatusOr<std::string> direct = Pickle(v, options.storage_id);
  ASSERT_TRUE(direct.ok()) << direct.status();
  EXPECT_EQ(*direct, *bytes);

  // Without a callback, tensors are an error; so is a failing callback.
  absl::StatusOr<std::string> no_cb = Pickle(Value(Dict{{"t", base}}));
  EXPECT_EQ(no_cb.status().code(), absl::StatusCode::kFailedPrecondition);
  options.storage_id = [](const at::Tensor&) -> absl::StatusOr<StorageId> {
    return absl::ResourceExhaustedError("no more keys");
  };
  EXPECT_EQ(Pickle(Value(base), options).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(PickleTest, PickleToAppends) {
  std::string out = "prefix";
  ASSERT_TRUE(PickleTo(Value(1), PickleOptions(), &out).ok());
  EXPECT_EQ(out.substr(0, 6), "prefix");
  absl::StatusOr<Value> v = Unpickle(std::string_view(out).substr(6), "appended");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, Value(1));
}

TEST(PickleTest, WriterRejectsBadInput) {
  EXPECT_FALSE(Pickle(Value(1), 1).ok());
  EXPECT_FALSE(Pickle(Value(1), 6).ok());
  EXPECT_FALSE(Pickle(Value(Global{"bad\nmodule", "x"})).ok());
  // A cycle.
  Value list = Value::List();
  list.items().push_back(list);
  absl::StatusOr<std::string> cyclic = Pickle(list);
  EXPECT_FALSE(cyclic.ok());
  list.items().clear();  // break the cycle so the list is freed
}

// ---------------------------------------------------------------------------
// Hand-made pickles: interpretation of torch callables and bad input.

TEST(UnpickleTest, InterpretsWellKnownCallables) {
  // [torch.Size((2, 3)), torch.device('cuda', 1), torch.device('cpu'), set([1]),
  //  frozenset(), _codecs.encode('\xe9', 'latin1'), torch.float16,
  //  OrderedDict() with _metadata state]
  const std::string p =
      "\x80\x02]("
      "ctorch\nSize\nK\x02K\x03\x86\x85R"
      "ctorch\ndevice\nX\x04\x00\x00\x00" "cudaK\x01\x86R"
      "ctorch\ndevice\nX\x03\x00\x00\x00" "cpu\x85R"
      "c__builtin__\nset\n]K\x01" "a\x85R"
      "c__builtin__\nfrozenset\n)R"
      "c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xa9X\x06\x00\x00\x00latin1\x86R"
      "ctorch\nfloat16\n"
      "ccollections\nOrderedDict\n)RX\x01\x00\x00\x00kK\x05s}X\x01\x00\x00\x00mK\x01sb"
      "e."s;
  absl::StatusOr<Value> v = Unpickle(p, "hand");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, Value::List({Value::Tuple({2, 3}), "cuda:1", "cpu", Value::List({1}),
                             Value::List(), Value::Bytes("\xe9"), Global{"torch", "float16"},
                             Value(Dict{{"k", 5}})}))
      << v->DebugString();
  EXPECT_EQ(DtypeFromName(v->items()[6].as_global().name), at::kHalf);
}

TEST(UnpickleTest, TextProtocol) {
  const std::string p =
      "(dp0\nS'a'\np1\n(lp2\nI1\naI01\naL12345678901L\naF1.5\naV\\u00e9x\\U0001f600\naNa"
      "g1\nasS'b\\n\\x41'\n(I-5\nI0\ntp3\ns(I7\n1I8\n0.";
  absl::StatusOr<Value> v = Unpickle(p, "proto0");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, Value(Dict{{"a", Value::List({1, true, int64_t{12345678901}, 1.5,
                                              "\u00e9x\U0001F600", Value(), "a"})},
                           {"b\nA", Value::Tuple({-5, 0})}}))
      << v->DebugString();
}

TEST(UnpickleTest, Protocol4Opcodes) {
  // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, EMPTY_SET/ADDITEMS,
  // BINUNICODE8, BINBYTES8, BYTEARRAY8, NEWOBJ_EX, LONG4, DUP, POP_MARK.
  std::string p = "\x80\x04\x95";
  std::string body =
      std::string("]\x94(") +
      "\x8c\x03" "abc\x94" +
      "\x8c\x03mod\x8c\x03" "Cls\x93)}\x92" +
      "\x8f(K\x01K\x02\x90" +
      std::string("\x8d\x02\x00\x00\x00\x00\x00\x00\x00hi", 11) +
      std::string("\x8e\x01\x00\x00\x00\x00\x00\x00\x00z", 10) +
      std::string("\x96\x01\x00\x00\x00\x00\x00\x00\x00y", 10) +
      std::string("\x8b\x02\x00\x00\x00\x00\x01", 7) +
      "h\x01" "2" +
      "(K\x09K\x09" "1" +
      "e.";
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((body.size() >> (8 * i)) & 0xff);
  p += len + body;
  absl::StatusOr<Value> v = Unpickle(p, "proto4");
  ASSERT_TRUE(v.ok()) << v.status();
  Object obj;
  obj.callable = Global{"mod", "Cls"};
  obj.newobj = true;
  EXPECT_EQ(*v, Value::List({"abc", Value(obj), Value::List({1, 2}), "hi", Value::Bytes("z"),
                             Value::Bytes("y"), 256, "abc", "abc"}))
      << v->DebugString();
}

TEST(UnpickleTest, PersistentIdsAndTensors) {
  // A tensor as torch.save writes it, through _rebuild_from_type_v2 and
  // _rebuild_parameter.
  const std::string tensor =
      "ctorch._utils\n_rebuild_tensor_v2\n"
      "((X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x00" "5X\x06\x00\x00\x00"
      "cuda:0K\x10tQK\x02K\x02K\x03\x86K\x03K\x01\x86\x89" "ccollections\nOrderedDict\n)RtR"s;
  // The tensor's argument tuple without its MARK and the final REDUCE.
  const std::string tensor_args = tensor.substr(tensor.find('(') + 1,
                                                tensor.size() - tensor.find('(') - 2);
  const std::string p =
      "\x80\x02]("s +
      "ctorch._utils\n_rebuild_parameter\n(" + tensor + "\x88" "ccollections\nOrderedDict\n)RtR" +
      "ctorch._tensor\n_rebuild_from_type_v2\n(ctorch._utils\n_rebuild_tensor_v2\n"
      "ctorch\nTensor\n(" + tensor_args + "}tR" +
      "(X\x07\x00\x00\x00storagectorch\nLongStorage\nX\x01\x00\x00\x00" "7X\x03\x00\x00\x00" "cpuK\x03tQ"s +
      "e.";
  absl::StatusOr<Value> v = Unpickle(p, "tensors");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->items().size(), 3u);
  TensorRef want = MakeRef("5", at::kHalf, 16, 2, {2, 3}, {3, 1}, true);
  want.location = "cuda:0";
  EXPECT_EQ(v->items()[0], Value(want)) << v->items()[0].DebugString();
  want.requires_grad = false;
  EXPECT_EQ(v->items()[1], Value(want)) << v->items()[1].DebugString();
  // A bare persistent id stays an Object, and is written back as one.
  ASSERT_TRUE(v->items()[2].is_object());
  EXPECT_EQ(v->items()[2].as_object().callable, PersistentIdCallable());
  absl::StatusOr<std::string> again = Pickle(v->items()[2]);
  ASSERT_TRUE(again.ok());
  absl::StatusOr<Value> back = Unpickle(*again, "again");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, v->items()[2]);
}

TEST(UnpickleTest, RejectsBadTensors) {
  auto tensor = [](std::string storage_class, int numel, int offset, std::string size,
                   std::string stride) {
    return "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\n"s +
           storage_class + "\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK"s +
           std::string(1, static_cast<char>(numel)) + "tQK" +
           std::string(1, static_cast<char>(offset)) + size + stride +
           "\x89" "ccollections\nOrderedDict\n)RtR.";
  };
  // Valid: 2x3 float view of 6 elements.
  EXPECT_TRUE(Unpickle(tensor("FloatStorage", 6, 0, "K\x02K\x03\x86", "K\x03K\x01\x86"), "ok").ok());
  // The view runs past the storage.
  absl::StatusOr<Value> past =
      Unpickle(tensor("FloatStorage", 6, 1, "K\x02K\x03\x86", "K\x03K\x01\x86"), "w.pt");
  ASSERT_FALSE(past.ok());
  EXPECT_NE(past.status().message().find("exceeds storage '0'"), std::string::npos)
      << past.status();
  EXPECT_NE(past.status().message().find("w.pt"), std::string::npos);
  // Unknown storage class; size/stride rank mismatch.
  EXPECT_FALSE(Unpickle(tensor("FooStorage", 6, 0, "K\x06\x85", "K\x01\x85"), "x").ok());
  EXPECT_FALSE(Unpickle(tensor("FloatStorage", 6, 0, "K\x06\x85", "K\x01K\x01\x86"), "x").ok());
}

TEST(UnpickleTest, BadInputIsAnErrorNotACrash) {
  const std::string good = *Pickle(Structure(), 4);
  // Every truncation fails cleanly (and none reads out of bounds: run under
  // --config=asan to check).
  for (size_t n = 0; n < good.size(); n += (n < 2000 ? 1 : 97)) {
    absl::StatusOr<Value> v = Unpickle(std::string_view(good).substr(0, n), "cut.pkl");
    ASSERT_FALSE(v.ok()) << n;
    EXPECT_NE(v.status().message().find("cut.pkl"), std::string::npos);
  }
  absl::StatusOr<Value> unknown = Unpickle("\x80\x02\xff.", "garbage.pkl");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown opcode 0xff"), std::string::npos);
  EXPECT_NE(unknown.status().message().find("at byte 2"), std::string::npos) << unknown.status();

  absl::StatusOr<Value> underflow = Unpickle("\x80\x02" "a.", "u");
  ASSERT_FALSE(underflow.ok());
  EXPECT_NE(underflow.status().message().find("stack underflow"), std::string::npos);
  absl::StatusOr<Value> memo = Unpickle("\x80\x02h\x05.", "m");
  ASSERT_FALSE(memo.ok());
  EXPECT_NE(memo.status().message().find("memo key 5"), std::string::npos);
  // Items below a MARK are out of reach; STOP inside a MARK.
  EXPECT_FALSE(Unpickle("]K\x01(a.", "x").ok());
  EXPECT_FALSE(Unpickle("K\x01(.", "x").ok());
  // Huge lengths, int overflow, EXT, non-global call, append to an int.
  EXPECT_FALSE(Unpickle("\x8d\xff\xff\xff\xff\xff\xff\xff\xff.", "x").ok());
  EXPECT_FALSE(Unpickle("X\xff\xff\xff\xff", "x").ok());
  EXPECT_FALSE(Unpickle(std::string("\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.", 12), "x").ok());
  EXPECT_FALSE(Unpickle("I99999999999999999999\n.", "x").ok());
  EXPECT_FALSE(Unpickle("\x82\x01.", "x").ok());
  EXPECT_FALSE(Unpickle("K\x01)R.", "x").ok());
  EXPECT_FALSE(Unpickle("K\x01K\x02" "a.", "x").ok());
  EXPECT_FALSE(Unpickle("\x80\x09N.", "x").ok());
  // Random garbage never crashes.
  uint32_t seed = 12345;
  for (int trial = 0; trial < 20000; ++trial) {
    std::string junk;
    const int len = 1 + trial % 40;
    for (int i = 0; i < len; ++i) {
      seed = seed * 1103515245u + 12345u;
      junk.push_back(static_cast<char>(seed >> 16));
    }
    (void)Unpickle(junk, "junk");
    // Also mutate one byte of a valid pickle.
    std::string mutated = good.substr(0, 600);
    mutated[(seed >> 8) % mutated.size()] = static_cast<char>(seed >> 24);
    (void)Unpickle(mutated, "mutated");
  }
}

TEST(UnpickleTest, DeepNestingAndCyclesAreErrors) {
  // 200000 nested lists: ']' * n + 'a' * (n - 1).
  const int n = 200000;
  std::string deep = std::string(n, ']') + std::string(n - 1, 'a') + ".";
  absl::StatusOr<Value> v = Unpickle(deep, "deep.pkl");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("nested deeper"), std::string::npos) << v.status();
  // Moderate nesting is fine.
  std::string ok = std::string(500, ']') + std::string(499, 'a') + ".";
  EXPECT_TRUE(Unpickle(ok, "ok").ok());
  // A list that contains itself: ] q0 h0 a .
  absl::StatusOr<Value> cyclic = Unpickle("]q\x00h\x00" "a."s, "cycle.pkl");
  ASSERT_FALSE(cyclic.ok());
  // Wide sharing (a DAG of 2^60 paths) is measured once, not exploded, and
  // refused: every walk of the result (Materialize, Clone, ==) would visit
  // each path. Moderate sharing (2^10 paths) loads.
  auto dag = [](int levels) {
    std::string p = "K\x01";
    for (int i = 0; i < levels; ++i) p += "2\x86";  // DUP, TUPLE2
    return p + ".";
  };
  absl::StatusOr<Value> wide = Unpickle(dag(60), "dag");
  ASSERT_FALSE(wide.ok());
  EXPECT_NE(wide.status().message().find("expand"), std::string::npos) << wide.status();
  EXPECT_TRUE(Unpickle(dag(10), "dag").ok());
}

TEST(UnpickleTest, LargeStateDictIsFast) {
  Dict d;
  for (int i = 0; i < 100000; ++i) {
    d.Set(absl::StrCat("model.layers.", i, ".weight"),
          MakeRef(std::to_string(i), at::kFloat, 16, 0, {4, 4}, {4, 1}));
  }
  Value v(std::move(d));
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> bytes = Pickle(v);
  ASSERT_TRUE(bytes.ok());
  absl::StatusOr<Value> back = Unpickle(*bytes, "big");
  ASSERT_TRUE(back.ok()) << back.status();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(back->as_dict().size(), 100000u);
  EXPECT_EQ(*back, v);
  EXPECT_LT(seconds, 10.0);  // linear: well under a second in practice
}

// ---------------------------------------------------------------------------
// Interoperability with Python's pickle and torch.save.

class PythonInteropTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = TempDir() + "/pickle_interop";
    ::mkdir(dir_.c_str(), 0755);
    std::string out;
    dump_status_ = RunPython("dump '" + dir_ + "'", &out);
    dump_output_ = out;
  }
  void SetUp() override {
    ASSERT_FALSE(g_python.empty()) << "pass the Python interpreter as the first test arg";
    ASSERT_EQ(dump_status_, 0) << dump_output_;
  }
  static std::string dir_;
  static int dump_status_;
  static std::string dump_output_;
};
std::string PythonInteropTest::dir_;
int PythonInteropTest::dump_status_ = -1;
std::string PythonInteropTest::dump_output_;

TEST_F(PythonInteropTest, ReadsPythonPickles) {
  Value expected = Structure();
  expected.as_dict().Set("set", Value::List({5}));  // sets load as lists
  expected.as_dict().Set("fset", Value::List({6}));
  for (int protocol : {2, 4, 5}) {
    const std::string path = absl::StrCat(dir_, "/py_p", protocol, ".pkl");
    absl::StatusOr<Value> v = Unpickle(ReadFile(path), path);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(*v, expected) << protocol << ": " << v->DebugString(4);
    EXPECT_EQ(KeyStrings(v->as_dict()), KeyStrings(expected.as_dict()));
    // Python wrote the shared list once; the memo makes both entries one list.
    const Value& shared = *v->as_dict().Find("shared");
    EXPECT_EQ(&shared.items()[0].items(), &shared.items()[1].items());
  }
}

TEST_F(PythonInteropTest, PythonReadsOurPickles) {
  for (int protocol : {2, 3, 4, 5}) {
    const std::string path = absl::StrCat(dir_, "/cc_p", protocol, ".pkl");
    absl::StatusOr<std::string> bytes = Pickle(Structure(), protocol);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    WriteFile(path, *bytes);
    std::string out;
    EXPECT_EQ(RunPython(absl::StrCat("check '", path, "' ", protocol), &out), 0) << out;
    EXPECT_NE(out.find("OK"), std::string::npos) << out;
  }
}

TEST_F(PythonInteropTest, PythonRebuildsOurTensors) {
  at::Tensor t = at::arange(6, at::kLong).view({2, 3}).t();  // sizes (3,2), strides (1,3)
  PickleOptions options;
  options.storage_id = [](const at::Tensor& tensor) -> absl::StatusOr<StorageId> {
    return StorageId{"3", "cpu",
                     static_cast<int64_t>(tensor.storage().nbytes() / tensor.element_size())};
  };
  Value v(Dict{
      {"a", MakeRef("0", at::kFloat, 24, 6, {3, 3}, {6, 2})},
      {"b", MakeRef("1", at::kBFloat16, 4, 0, {2, 2}, {2, 1}, true)},
      {"c", MakeRef("2", at::kUInt16, 5, 0, {5}, {1})},
      {"t", t},
      {"e", MakeRef("4", at::kDouble, 0, 0, {0, 3}, {3, 1})},
  });
  absl::StatusOr<std::string> bytes = Pickle(v, options);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const std::string path = dir_ + "/cc_tensors.pkl";
  WriteFile(path, *bytes);
  std::string out;
  EXPECT_EQ(RunPython("tensors '" + path + "'", &out), 0) << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;
}

TEST_F(PythonInteropTest, ReadsTorchSaveDataPkl) {
  const std::string path = dir_ + "/torch_data.pkl";
  absl::StatusOr<Value> v = Unpickle(ReadFile(path), path);
  ASSERT_TRUE(v.ok()) << v.status();
  absl::StatusOr<Value> expect = Unpickle(ReadFile(dir_ + "/torch_expect.pkl"), "expect");
  ASSERT_TRUE(expect.ok()) << expect.status();
  const Dict& tensors = expect->as_dict().Find("tensors")->as_dict();
  const Dict& records = expect->as_dict().Find("records")->as_dict();
  ASSERT_TRUE(v->is_dict());

  std::map<int64_t, std::string> key_of_group;
  std::map<std::string, int64_t> group_of_key;
  for (const auto& [name_value, e] : tensors) {
    const std::string& name = name_value.as_string();
    SCOPED_TRACE(name);
    const Value* got = name == "nested.list.0"
                           ? &v->as_dict().Find("nested")->as_dict().Find("list")->items()[0]
                           : v->as_dict().Find(name);
    ASSERT_NE(got, nullptr);
    ASSERT_TRUE(got->is_tensor_ref()) << got->DebugString();
    const TensorRef& r = got->as_tensor_ref();
    const Dict& ed = e.as_dict();
    EXPECT_EQ(DtypeName(r.dtype), ed.Find("dtype")->as_string());
    EXPECT_EQ(r.storage_offset, ed.Find("offset")->as_int());
    std::vector<int64_t> size, stride;
    for (const Value& x : ed.Find("size")->items()) size.push_back(x.as_int());
    for (const Value& x : ed.Find("stride")->items()) stride.push_back(x.as_int());
    EXPECT_EQ(r.sizes, size);
    EXPECT_EQ(r.strides, stride);
    EXPECT_EQ(r.requires_grad, ed.Find("requires_grad")->as_bool());
    EXPECT_EQ(r.location, "cpu");
    EXPECT_EQ(r.storage_nbytes(), ed.Find("storage_nbytes")->as_int());
    // The record data/<key> exists with exactly the storage's bytes.
    const Value* record = records.Find(r.storage_key);
    ASSERT_NE(record, nullptr) << r.storage_key;
    EXPECT_EQ(record->as_int(), r.storage_nbytes());
    // Tensors share a key exactly when they share a storage.
    const int64_t group = ed.Find("storage_group")->as_int();
    auto [g, g_new] = key_of_group.emplace(group, r.storage_key);
    EXPECT_EQ(g->second, r.storage_key);
    auto [k, k_new] = group_of_key.emplace(r.storage_key, group);
    EXPECT_EQ(k->second, group);
  }
  EXPECT_EQ(key_of_group.size(), records.size());
  EXPECT_EQ(v->as_dict().Find("nested")->as_dict().Find("step")->as_int(), 10);
  EXPECT_TRUE(v->as_dict().Find("param")->as_tensor_ref().requires_grad);
  EXPECT_EQ(v->as_dict().Find("u16")->as_tensor_ref().dtype, at::kUInt16);
  EXPECT_EQ(v->as_dict().Find("u16")->as_tensor_ref().storage_numel, 3);

  // Written back by us, it still reads the same.
  absl::StatusOr<std::string> again = Pickle(*v);
  ASSERT_TRUE(again.ok()) << again.status();
  absl::StatusOr<Value> back = Unpickle(*again, "again");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, *v);
}

}  // namespace
}  // namespace fabric::pickle

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 1) fabric::pickle::g_python = argv[1];
  if (argc > 2) fabric::pickle::g_script = argv[2];
  return RUN_ALL_TESTS();
}
