#include "checkpoint/torch_save.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace fabric {
namespace {

std::string TmpPath(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

TEST(TorchSave, RoundTripsNestedValues) {
  at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4});
  Dict inner{{"bf16", at::ones({5}, at::kBFloat16)},
             {"i64", at::arange(7, at::kLong)},
             {"flag", true}};
  Dict root{{"a", base},
            {"a_t", base.t()},                 // non-contiguous view of the same storage
            {"a_row", base.select(0, 1)},      // offset view of the same storage
            {"none", Value()},
            {"n", int64_t{-5}},
            {"x", 2.5},
            {"s", "hello"},
            {"list", Value::List({1, "two", Value::Tuple({3.0, Value()})})},
            {"inner", inner}};
  const std::string path = TmpPath("nested.pt");
  ASSERT_TRUE(TorchSave(path, Value(root)).ok());

  absl::StatusOr<Value> loaded = TorchLoad(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, Value(root));
  const Dict& d = loaded->as_dict();
  // Views keep sharing one storage after loading, as with torch.load.
  const at::Tensor& a = d.Find("a")->as_tensor();
  const at::Tensor& at = d.Find("a_t")->as_tensor();
  EXPECT_TRUE(a.storage().is_alias_of(at.storage()));
  EXPECT_FALSE(at.is_contiguous());
  EXPECT_EQ(d.Find("a_row")->as_tensor().storage_offset(), 4);
}

TEST(TorchSave, ReadIntoWritesStraightIntoDestination) {
  at::Tensor src = at::randn({64, 32});
  const std::string path = TmpPath("into.pt");
  ASSERT_TRUE(TorchSave(path, Value(Dict{{"w", src}})).ok());
  auto file = TorchFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const Value* ref = (*file)->root().as_dict().Find("w");
  ASSERT_TRUE(ref != nullptr && ref->is_tensor_ref());

  at::Tensor dst = at::zeros({64, 32});
  void* before = dst.data_ptr();
  ASSERT_TRUE((*file)->ReadInto(ref->as_tensor_ref(), dst).ok());
  EXPECT_EQ(dst.data_ptr(), before);
  EXPECT_TRUE(dst.equal(src));

  // A different dtype destination is cast, as load_state_dict does.
  at::Tensor dst64 = at::zeros({64, 32}, at::kDouble);
  ASSERT_TRUE((*file)->ReadInto(ref->as_tensor_ref(), dst64).ok());
  EXPECT_TRUE(dst64.equal(src.to(at::kDouble)));

  // A wrong shape is an error naming the shapes.
  at::Tensor wrong = at::zeros({32, 64});
  absl::Status s = (*file)->ReadInto(ref->as_tensor_ref(), wrong);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("[64, 32]"), std::string::npos) << s;
}

TEST(TorchSave, ReadIntoManyMixesDirectAndConvertedReads) {
  Dict d;
  std::vector<at::Tensor> src;
  for (int i = 0; i < 50; ++i) {
    src.push_back(at::randn({1 + i * 13}));
    d.Set(absl::StrCat("t", i), src.back());
  }
  const std::string path = TmpPath("many.pt");
  ASSERT_TRUE(TorchSave(path, Value(d)).ok());
  auto file = TorchFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<TensorRead> reads;
  for (int i = 0; i < 50; ++i) {
    // Every third destination is float64: read through a temporary and cast.
    at::Tensor dst = at::zeros({1 + i * 13}, i % 3 == 0 ? at::kDouble : at::kFloat);
    reads.push_back({(*file)->root().as_dict().Find(absl::StrCat("t", i))->as_tensor_ref(), dst});
  }
  std::vector<void*> before;
  for (const TensorRead& r : reads) before.push_back(r.destination.data_ptr());
  ASSERT_TRUE((*file)->ReadIntoMany(reads).ok());
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(reads[i].destination.data_ptr(), before[i]);
    EXPECT_TRUE(reads[i].destination.equal(src[i].to(reads[i].destination.scalar_type())))
        << "tensor " << i;
  }
  // A wrong shape anywhere fails the batch, naming the shapes.
  reads[7].destination = at::zeros({3});
  absl::Status s = (*file)->ReadIntoMany(reads);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("[92]"), std::string::npos) << s;
}

// map_location to another device: storages are read in groups and moved one
// group at a time (the meta device stands in for a GPU here).
TEST(TorchSave, MaterializeOnAnotherDevice) {
  Dict d;
  at::Tensor big = at::randn({40 << 20});  // 160 MiB: more than one group
  d.Set("big", big);
  d.Set("view", big.narrow(0, 5, 10));     // shares big's storage
  for (int i = 0; i < 20; ++i) d.Set(absl::StrCat("t", i), at::randn({1000 + i}));
  d.Set("empty", at::zeros({0}));
  const std::string path = TmpPath("device.pt");
  ASSERT_TRUE(TorchSave(path, Value(d)).ok());
  auto file = TorchFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<Value> m = (*file)->Materialize((*file)->root(), c10::Device("meta"));
  ASSERT_TRUE(m.ok()) << m.status();
  for (const auto& [k, v] : m->as_dict()) {
    const at::Tensor& t = v.as_tensor();
    EXPECT_TRUE(t.device().is_meta()) << k.as_string();
    EXPECT_EQ(t.sizes(), d.Find(k.as_string())->as_tensor().sizes()) << k.as_string();
  }
  EXPECT_TRUE(m->as_dict().Find("view")->as_tensor().storage().is_alias_of(
      m->as_dict().Find("big")->as_tensor().storage()));
  EXPECT_EQ(m->as_dict().Find("view")->as_tensor().storage_offset(), 5);
}

TEST(TorchSave, FailedSaveKeepsPreviousFile) {
  const std::string path = TmpPath("keep.pt");
  ASSERT_TRUE(TorchSave(path, Value(Dict{{"v", at::ones({4})}})).ok());
  // An unsupported value fails the save midway (after the file was opened).
  Dict bad{{"ok", at::ones({4})}, {"bad", at::ones({2}).to_sparse()}};
  EXPECT_FALSE(TorchSave(path, Value(bad)).ok());
  auto loaded = TorchLoad(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->as_dict().Find("v")->as_tensor().equal(at::ones({4})));
  // No temporary file is left behind.
  int entries = 0;
  for (const char* name : {"keep.pt"}) entries += access(TmpPath(name).c_str(), F_OK) == 0;
  EXPECT_EQ(entries, 1);
}

TEST(TorchSave, BadFilesGiveClearErrors) {
  absl::StatusOr<Value> missing = TorchLoad(TmpPath("does_not_exist.pt"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("does_not_exist.pt"), std::string::npos);

  const std::string text = TmpPath("text.pt");
  std::ofstream(text) << "this is not a checkpoint at all, just some text";
  absl::StatusOr<Value> not_zip = TorchLoad(text);
  ASSERT_FALSE(not_zip.ok());
  EXPECT_NE(not_zip.status().message().find("text.pt"), std::string::npos);

  // Truncate a real checkpoint in the middle of its tensor data.
  const std::string path = TmpPath("trunc.pt");
  ASSERT_TRUE(TorchSave(path, Value(Dict{{"w", at::randn({1000})}})).ok());
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  ASSERT_EQ(truncate(path.c_str(), st.st_size / 2), 0);
  absl::StatusOr<Value> truncated = TorchLoad(path);
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.status().message().find("trunc.pt"), std::string::npos)
      << truncated.status();
}

TEST(TorchSave, StorageBytesCountsSharedStoragesOnce) {
  at::Tensor t = at::zeros({10}, at::kFloat);
  Dict d{{"a", t}, {"b", t.narrow(0, 2, 3)}, {"c", at::zeros({2}, at::kDouble)}};
  EXPECT_EQ(StorageBytes(Value(d)), 10 * 4 + 2 * 8);
}

TensorRef Ref(const std::string& key, at::ScalarType dtype, std::vector<int64_t> sizes) {
  TensorRef r;
  r.storage_key = key;
  r.dtype = dtype;
  r.sizes = sizes;
  int64_t n = 1;
  r.strides.assign(sizes.size(), 1);
  for (int i = static_cast<int>(sizes.size()) - 1; i >= 0; --i) {
    r.strides[i] = n;
    n *= sizes[i];
  }
  r.storage_numel = n;
  return r;
}

TEST(TorchStreamWriter, WritesStoragesOneAtATime) {
  at::Tensor a = at::randn({4, 3});
  at::Tensor b = at::arange(10, at::kLong);
  Dict tree{{"a", Ref("0", at::kFloat, {4, 3})}, {"b", Ref("1", at::kLong, {10})}, {"n", 3}};
  const std::string path = TmpPath("stream.pt");
  auto w = TorchStreamWriter::Create(path, Value(tree));
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ((*w)->StorageOrder().size(), 2u);
  EXPECT_EQ((*w)->StorageOrder()[1].second, 80u);
  // Out of order is refused.
  EXPECT_FALSE((*w)->WriteStorage("1", b.data_ptr(), 80).ok());
  ASSERT_TRUE((*w)->WriteStorage("0", a.data_ptr(), 48).ok());
  // In pieces.
  ASSERT_TRUE((*w)->BeginStorage("1", 80).ok());
  ASSERT_TRUE((*w)->AppendStorage(b.data_ptr(), 40).ok());
  ASSERT_TRUE((*w)->AppendStorage(static_cast<char*>(b.data_ptr()) + 40, 40).ok());
  ASSERT_TRUE((*w)->EndStorage().ok());
  ASSERT_TRUE((*w)->Commit().ok());
  auto loaded = TorchLoad(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, Value(Dict{{"a", a}, {"b", b}, {"n", 3}}));
}

TEST(TorchStreamWriter, NothingAppearsWithoutCommit) {
  const std::string path = TmpPath("uncommitted.pt");
  {
    auto w = TorchStreamWriter::Create(path, Value(Dict{{"a", Ref("0", at::kFloat, {2})}}));
    ASSERT_TRUE(w.ok()) << w.status();
    at::Tensor a = at::ones({2});
    ASSERT_TRUE((*w)->WriteStorage("0", a.data_ptr(), 8).ok());
  }
  EXPECT_NE(access(path.c_str(), F_OK), 0);
  auto w = TorchStreamWriter::Create(path, Value(Dict{{"a", Ref("0", at::kFloat, {2})}}));
  ASSERT_TRUE(w.ok());
  EXPECT_FALSE((*w)->Commit().ok());  // a storage is missing
  EXPECT_NE(access(path.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace fabric
