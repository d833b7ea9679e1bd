#include "checkpoint/value.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"

namespace fabric {
namespace {

std::vector<std::string> Keys(const Dict& d) {
  std::vector<std::string> keys;
  for (const auto& kv : d) keys.push_back(kv.first.as_string());
  return keys;
}

TEST(ValueTest, Kinds) {
  EXPECT_TRUE(Value().is_none());
  EXPECT_TRUE(Value(nullptr).is_none());
  EXPECT_TRUE(Value(true).is_bool());
  EXPECT_TRUE(Value(3).is_int());
  EXPECT_TRUE(Value(int64_t{1} << 40).is_int());
  EXPECT_TRUE(Value(1.5).is_float());
  EXPECT_TRUE(Value("x").is_string());
  EXPECT_TRUE(Value::Bytes("x").is_bytes());
  EXPECT_TRUE(Value(at::zeros({2})).is_tensor());
  EXPECT_TRUE(Value(TensorRef{}).is_tensor_ref());
  EXPECT_TRUE(Value::List().is_list());
  EXPECT_TRUE(Value::Tuple().is_tuple());
  EXPECT_TRUE(Value::List().is_sequence());
  EXPECT_TRUE(Value::Tuple().is_sequence());
  EXPECT_TRUE(Value::MakeDict().is_dict());
  EXPECT_TRUE(Value(Global{"torch", "float32"}).is_global());
  EXPECT_TRUE(Value(Object{}).is_object());
  EXPECT_STREQ(Value::List().kind_name(), "list");
  EXPECT_STREQ(Value::KindName(Value::Kind::kTensorRef), "TensorRef");
}

TEST(ValueTest, Accessors) {
  EXPECT_EQ(Value(int64_t{-7}).as_int(), -7);
  EXPECT_DOUBLE_EQ(Value(2).as_float(), 2.0);  // ints read as floats
  EXPECT_DOUBLE_EQ(Value(0.25).as_float(), 0.25);
  EXPECT_EQ(Value("héllo").as_string(), "héllo");
  EXPECT_EQ(Value::Bytes(std::string("a\0b", 3)).as_bytes().size(), 3u);
  EXPECT_THROW(Value("x").as_int(), c10::Error);
  EXPECT_THROW(Value(1).as_string(), c10::Error);
  EXPECT_THROW(Value(true).as_int(), c10::Error);
  EXPECT_THROW(Value().items(), c10::Error);
}

TEST(ValueTest, CopiesShareContainers) {
  Value a = Value::List({1, 2});
  Value b = a;
  b.items().push_back(3);
  EXPECT_EQ(a.items().size(), 3u);  // shared, as in Python
}

TEST(DictTest, KeepsInsertionOrderAndReplacesInPlace) {
  Dict d;
  d.Set("b", 1);
  d.Set("a", 2);
  d.Set("c", 3);
  d.Set("a", 20);
  EXPECT_EQ(d.size(), 3u);
  EXPECT_EQ(Keys(d), (std::vector<std::string>{"b", "a", "c"}));
  ASSERT_NE(d.Find("a"), nullptr);
  EXPECT_EQ(d.Find("a")->as_int(), 20);
  EXPECT_EQ(d.Find("zz"), nullptr);
  EXPECT_TRUE(d.Contains("c"));
}

TEST(DictTest, IntAndOtherKeys) {
  Dict d{{1, "one"}, {"1", "string one"}, {Value::Tuple({1, 2}), "pair"}, {2.5, "float"}};
  EXPECT_EQ(d.size(), 4u);
  EXPECT_EQ(d.Find(Value(1))->as_string(), "one");
  EXPECT_EQ(d.Find("1")->as_string(), "string one");
  EXPECT_EQ(d.Find(Value::Tuple({1, 2}))->as_string(), "pair");
  EXPECT_EQ(d.Find(Value(2.5))->as_string(), "float");
  EXPECT_EQ(d.Find(Value(2)), nullptr);
  EXPECT_EQ(d.Find(Value::Tuple({2, 1})), nullptr);
  d.Set(Value::Tuple({1, 2}), "pair2");
  EXPECT_EQ(d.size(), 4u);
  EXPECT_EQ(d.Find(Value::Tuple({1, 2}))->as_string(), "pair2");
}

TEST(DictTest, EraseKeepsOrderAndIndex) {
  Dict d;
  for (int i = 0; i < 10; ++i) d.Set(std::to_string(i), i);
  EXPECT_TRUE(d.Erase(Value("3")));
  EXPECT_FALSE(d.Erase(Value("3")));
  EXPECT_EQ(d.size(), 9u);
  EXPECT_EQ(d.Find("3"), nullptr);
  for (int i = 0; i < 10; ++i) {
    if (i == 3) continue;
    ASSERT_NE(d.Find(std::to_string(i)), nullptr) << i;
    EXPECT_EQ(d.Find(std::to_string(i))->as_int(), i);
  }
  EXPECT_EQ(d.items()[3].first.as_string(), "4");
}

TEST(DictTest, MutableItemsReindexes) {
  Dict d{{"a", 1}, {"b", 2}};
  d.mutable_items()[0].first = Value("x");
  d.mutable_items().emplace_back(Value("c"), Value(3));
  EXPECT_EQ(d.Find("a"), nullptr);
  ASSERT_NE(d.Find("x"), nullptr);
  EXPECT_EQ(d.Find("x")->as_int(), 1);
  ASSERT_NE(d.Find("c"), nullptr);
  d.Set("d", 4);
  EXPECT_EQ(Keys(d), (std::vector<std::string>{"x", "b", "c", "d"}));
}

TEST(DictTest, ManyKeysAreIndexed) {
  Dict d;
  for (int i = 0; i < 100000; ++i) d.Set("layer." + std::to_string(i) + ".weight", i);
  for (int i = 0; i < 100000; i += 997) {
    EXPECT_EQ(d.Find("layer." + std::to_string(i) + ".weight")->as_int(), i);
  }
}

TEST(ValueTest, Equality) {
  EXPECT_EQ(Value(), Value());
  EXPECT_EQ(Value(1), Value(int64_t{1}));
  EXPECT_NE(Value(1), Value(1.0));  // kinds differ
  EXPECT_NE(Value(1), Value(true));
  EXPECT_EQ(Value(std::nan("")), Value(std::nan("")));
  EXPECT_EQ(Value("a"), Value(std::string("a")));
  EXPECT_NE(Value("a"), Value::Bytes("a"));
  EXPECT_NE(Value::List({1}), Value::Tuple({1}));
  EXPECT_EQ(Value::List({1, "x"}), Value::List({1, "x"}));
  EXPECT_NE(Value::List({1, "x"}), Value::List({"x", 1}));
  // Dicts compare as in Python: order does not matter.
  EXPECT_EQ(Value(Dict{{"a", 1}, {"b", 2}}), Value(Dict{{"b", 2}, {"a", 1}}));
  EXPECT_NE(Value(Dict{{"a", 1}, {"b", 2}}), Value(Dict{{"a", 1}, {"b", 3}}));
  EXPECT_NE(Value(Dict{{"a", 1}}), Value(Dict{{"a", 1}, {"b", 3}}));
  EXPECT_EQ(Value(Global{"torch", "float32"}), Value(Global{"torch", "float32"}));
  EXPECT_NE(Value(Global{"torch", "float32"}), Value(Global{"torch", "float16"}));
}

TEST(ValueTest, TensorEquality) {
  at::Tensor t = at::arange(6, at::kFloat).reshape({2, 3});
  EXPECT_EQ(Value(t), Value(t.clone()));
  EXPECT_EQ(Value(t.t()), Value(t.t().contiguous()));  // by value, not layout
  EXPECT_NE(Value(t), Value(t.to(at::kDouble)));
  EXPECT_NE(Value(t), Value(t.reshape({3, 2})));
  at::Tensor u = t.clone();
  u[1][2] = 100;
  EXPECT_NE(Value(t), Value(u));
  EXPECT_EQ(Value(at::Tensor()), Value(at::Tensor()));
  EXPECT_NE(Value(at::Tensor()), Value(t));

  TensorRef r;
  r.storage_key = "0";
  r.sizes = {2, 3};
  r.strides = {3, 1};
  r.storage_numel = 6;
  TensorRef r2 = r;
  EXPECT_EQ(Value(r), Value(r2));
  r2.storage_offset = 1;
  EXPECT_NE(Value(r), Value(r2));
}

TEST(ValueTest, ObjectEquality) {
  Object o;
  o.callable = Global{"mod", "Cls"};
  o.args = std::make_shared<std::vector<Value>>(std::vector<Value>{1, "a"});
  Object p = o;
  p.args = std::make_shared<std::vector<Value>>(*o.args);
  EXPECT_EQ(Value(o), Value(p));
  p.state = std::make_shared<Value>(Dict{{"x", 1}});
  EXPECT_NE(Value(o), Value(p));
  o.state = std::make_shared<Value>(Dict{{"x", 1}});
  EXPECT_EQ(Value(o), Value(p));
  p.newobj = true;
  EXPECT_NE(Value(o), Value(p));
}

TEST(ValueTest, CloneIsDeepForContainersOnly) {
  at::Tensor t = at::zeros({2});
  Value inner = Value::List({1, 2});
  Value v(Dict{{"list", inner}, {"t", t}, {"tuple", Value::Tuple({inner})}});
  Value c = v.Clone();
  EXPECT_EQ(c, v);
  inner.items().push_back(3);
  EXPECT_NE(c, v);  // the clone did not see the change
  EXPECT_EQ(c.as_dict().Find("list")->items().size(), 2u);
  EXPECT_EQ(c.as_dict().Find("tuple")->items()[0].items().size(), 2u);
  // The tensor is shared.
  EXPECT_TRUE(c.as_dict().Find("t")->as_tensor().is_same(t));
  // The clone's dict is its own.
  c.as_dict().Set("new", 1);
  EXPECT_FALSE(v.as_dict().Contains("new"));

  Object o;
  o.callable = Global{"m", "C"};
  o.args = std::make_shared<std::vector<Value>>(std::vector<Value>{inner});
  o.state = std::make_shared<Value>(Dict{{"k", inner}});
  Value ov(o);
  Value oc = ov.Clone();
  EXPECT_EQ(ov, oc);
  inner.items().push_back(4);
  EXPECT_NE(ov, oc);
}

TEST(ValueTest, DeepTreesAreFreedWithoutRecursion) {
  // A million levels would overflow the stack with recursive destructors.
  Value root = Value::List();
  Value cur = root;
  for (int i = 0; i < 1000000; ++i) {
    Value next = (i % 3 == 0)   ? Value::List()
                 : (i % 3 == 1) ? Value::MakeDict()
                                : Value(Object());
    if (cur.is_list()) {
      cur.items().push_back(next);
    } else if (cur.is_dict()) {
      cur.as_dict().Set(Value(i), next);
    } else {
      cur.as_object().args->push_back(next);
    }
    cur = next;
  }
  cur = Value();
  root = Value();  // must not crash
  SUCCEED();
}

TEST(ValueTest, DestroyingOneOwnerKeepsSharedChildren) {
  Value shared = Value::List({1, 2, 3});
  {
    Value outer = Value::List({Value::List({shared}), shared});
  }
  EXPECT_EQ(shared, Value::List({1, 2, 3}));
}

TEST(ValueTest, DebugString) {
  Value v(Dict{{"a", Value::List({1, 2.5, "x'y", Value::Bytes("\x01z"), true, Value()})},
               {"t", Value::Tuple({1})},
               {"g", Global{"torch", "float32"}}});
  EXPECT_EQ(v.DebugString(),
            "{'a': [1, 2.5, 'x\\'y', b'\\x01z', True, None], 't': (1,), 'g': torch.float32}");
  EXPECT_EQ(Value(0.1).DebugString(), "0.1");
  EXPECT_EQ(Value(3.0).DebugString(), "3.0");
  EXPECT_EQ(Value(at::zeros({2, 3}, at::kBFloat16)).DebugString(), "tensor(bfloat16[2, 3])");
  std::vector<Value> many;
  for (int i = 0; i < 20; ++i) many.push_back(i);
  EXPECT_EQ(Value::List(many).DebugString(3), "[0, 1, 2, ... (17 more)]");
  TensorRef r;
  r.storage_key = "7";
  r.sizes = {4};
  r.strides = {1};
  EXPECT_EQ(Value(r).DebugString(), "TensorRef(float32[4], key='7', cpu)");
}

TEST(TensorRefTest, Geometry) {
  TensorRef r;
  r.dtype = at::kBFloat16;
  r.storage_numel = 10;
  r.sizes = {2, 3};
  r.strides = {3, 1};
  EXPECT_EQ(r.numel(), 6);
  EXPECT_EQ(r.storage_nbytes(), 20);
  EXPECT_TRUE(r.is_contiguous());
  r.strides = {1, 2};
  EXPECT_FALSE(r.is_contiguous());
  r.sizes = {1, 3};
  r.strides = {100, 1};  // size-1 dims do not matter
  EXPECT_TRUE(r.is_contiguous());
  r.sizes = {};
  r.strides = {};
  EXPECT_EQ(r.numel(), 1);
  EXPECT_TRUE(r.is_contiguous());
}

TEST(DtypeTest, StorageClassNames) {
  const std::pair<at::ScalarType, const char*> kCases[] = {
      {at::kFloat, "FloatStorage"},         {at::kDouble, "DoubleStorage"},
      {at::kHalf, "HalfStorage"},           {at::kBFloat16, "BFloat16Storage"},
      {at::kLong, "LongStorage"},           {at::kInt, "IntStorage"},
      {at::kShort, "ShortStorage"},         {at::kChar, "CharStorage"},
      {at::kByte, "ByteStorage"},           {at::kBool, "BoolStorage"},
      {at::kComplexFloat, "ComplexFloatStorage"},
      {at::kComplexDouble, "ComplexDoubleStorage"},
  };
  for (const auto& [dtype, name] : kCases) {
    EXPECT_EQ(StorageClassName(dtype), name);
    EXPECT_EQ(DtypeFromStorageClass(name), dtype);
  }
  // Newer dtypes are saved as UntypedStorage plus a dtype.
  EXPECT_EQ(StorageClassName(at::kFloat8_e4m3fn), std::nullopt);
  EXPECT_EQ(StorageClassName(at::kUInt16), std::nullopt);
  EXPECT_EQ(DtypeFromStorageClass("UntypedStorage"), std::nullopt);
  EXPECT_EQ(DtypeFromStorageClass("NoSuchStorage"), std::nullopt);
}

TEST(DtypeTest, Names) {
  const std::pair<at::ScalarType, const char*> kCases[] = {
      {at::kFloat, "float32"},        {at::kDouble, "float64"},
      {at::kHalf, "float16"},         {at::kBFloat16, "bfloat16"},
      {at::kLong, "int64"},           {at::kInt, "int32"},
      {at::kShort, "int16"},          {at::kChar, "int8"},
      {at::kByte, "uint8"},           {at::kBool, "bool"},
      {at::kComplexFloat, "complex64"}, {at::kComplexDouble, "complex128"},
      {at::kFloat8_e4m3fn, "float8_e4m3fn"}, {at::kFloat8_e5m2, "float8_e5m2"},
      {at::kUInt16, "uint16"},        {at::kUInt32, "uint32"},
      {at::kUInt64, "uint64"},
  };
  for (const auto& [dtype, name] : kCases) {
    EXPECT_EQ(DtypeName(dtype), name);
    EXPECT_EQ(DtypeFromName(name), dtype);
  }
  EXPECT_EQ(DtypeFromName("float"), at::kFloat);
  EXPECT_EQ(DtypeFromName("half"), at::kHalf);
  EXPECT_EQ(DtypeFromName("long"), at::kLong);
  EXPECT_EQ(DtypeFromName("torch.bfloat16"), at::kBFloat16);
  EXPECT_EQ(DtypeFromName("float33"), std::nullopt);
}

}  // namespace
}  // namespace fabric
