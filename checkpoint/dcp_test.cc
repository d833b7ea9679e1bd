// Sharded checkpoints: our writer and reader against each other and against
// real torch.distributed.checkpoint (testdata/dcp_interop.py).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <tuple>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/byte_sink.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/dcp_writer.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"

namespace fabric::dcp {
namespace {

namespace fs = std::filesystem;

std::string g_python;  // argv[1]
std::string g_script;  // argv[2]: testdata/dcp_interop.py

std::string FreshDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = absl::StrCat(tmp ? tmp : "/tmp", "/", name);
  fs::remove_all(dir);
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int RunPython(const std::string& args, std::string* out) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string log = absl::StrCat(tmp ? tmp : "/tmp", "/python.log");
  const std::string cmd = absl::StrCat(g_python, " ", g_script, " ", args, " > ", log, " 2>&1");
  const int rc = std::system(cmd.c_str());
  *out = ReadFile(log);
  return rc;
}

class StringSink : public ByteSink {
 public:
  absl::Status Write(const void* data, size_t n) override {
    bytes.append(static_cast<const char*>(data), n);
    return absl::OkStatus();
  }
  uint64_t position() const override { return bytes.size(); }
  std::string bytes;
};

bool SameTensor(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         at::equal(a.cpu(), b.cpu());
}

ObjectPath P(std::initializer_list<PathItem> items) { return ObjectPath(items); }

// The state our 3-rank test checkpoint holds, in full.
struct Source {
  at::Tensor vec = at::arange(10, at::kFloat);                              // 2 chunks
  at::Tensor mat = at::arange(48, at::kDouble).reshape({6, 8}).mul(1.5);   // 3 chunks
  at::Tensor bias = at::arange(5, at::kFloat).to(at::kBFloat16);            // 1 chunk
  at::Tensor step = at::full({}, 7, at::kLong);                            // 0-dim
};

WriteItem With(WriteItem item, ObjectPath path) {
  item.path = std::move(path);
  return item;
}

// Three ranks: "model.vec" split [0,6) + [6,10); "model.mat" (6x8) as rows
// 0-2, then rows 3-5 split at column 5 (blocks, not just rows).
std::vector<std::vector<WriteItem>> ThreeRankItems(const Source& s) {
  StringSink name_blob;
  EXPECT_TRUE(TorchSaveToSink(name_blob, "archive", Value("hello")).ok());
  std::vector<std::vector<WriteItem>> items(3);
  items[0] = {
      With(WriteItem::Shard("model.vec", s.vec.narrow(0, 0, 6), {0}, {10}), P({"model", "vec"})),
      With(WriteItem::Shard("model.mat", s.mat.narrow(0, 0, 3), {0, 0}, {6, 8}),
           P({"model", "mat"})),
      With(WriteItem::Tensor("model.bias", s.bias), P({"model", "bias"})),
      With(WriteItem::Tensor("optimizer.state.0.step", s.step),
           P({"optimizer", "state", "0", "step"})),
      With(WriteItem::Object("optimizer.param_groups.0.lr", Value(0.01)),
           P({"optimizer", "param_groups", int64_t{0}, "lr"})),
      With(WriteItem::Object("epoch", Value(7)), P({"epoch"})),
  };
  items[1] = {
      // A non-contiguous view: written contiguous.
      With(WriteItem::Shard("model.mat", s.mat.narrow(0, 3, 3).narrow(1, 0, 5), {3, 0}, {6, 8}),
           P({"model", "mat"})),
      With(WriteItem::Shard("model.vec", s.vec.narrow(0, 6, 4), {6}, {10}), P({"model", "vec"})),
      With(WriteItem::Object("epoch", Value(7)), P({"epoch"})),  // also on rank 0: deduped
      With(WriteItem::Blob("name", name_blob.bytes), P({"name"})),
  };
  items[2] = {
      With(WriteItem::Shard("model.mat", s.mat.narrow(0, 3, 3).narrow(1, 5, 3), {3, 5}, {6, 8}),
           P({"model", "mat"})),
  };
  return items;
}

// Writes the 3-rank checkpoint; returns every rank's results.
std::vector<std::vector<WriteResult>> WriteThreeRanks(const std::string& dir, const Source& s) {
  std::vector<std::vector<WriteResult>> results;
  const auto items = ThreeRankItems(s);
  for (int rank = 0; rank < 3; ++rank) {
    absl::StatusOr<std::vector<WriteResult>> r = WriteRankFile(dir, rank, items[rank]);
    EXPECT_TRUE(r.ok()) << r.status();
    results.push_back(r.ok() ? *r : std::vector<WriteResult>{});
  }
  absl::StatusOr<Metadata> md = BuildMetadata(results, NewStorageMeta(dir));
  EXPECT_TRUE(md.ok()) << md.status();
  if (md.ok()) {
    EXPECT_TRUE(WriteMetadata(dir, *md).ok());
  }
  return results;
}

at::Tensor Box(const at::Tensor& t, const std::vector<int64_t>& off,
               const std::vector<int64_t>& size) {
  at::Tensor v = t;
  for (size_t d = 0; d < off.size(); ++d) v = v.narrow(d, off[d], size[d]);
  return v;
}

TEST(DcpTest, FileLayoutIsFileSystemWritersLayout) {
  const std::string dir = FreshDir("layout");
  Source s;
  auto results = WriteThreeRanks(dir, s);
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(fs::exists(dir + "/" + RankFileName(r)));
  EXPECT_TRUE(fs::exists(dir + "/.metadata"));
  // Rank 0's items: bytes first, then tensors, back to back from offset 0
  // but for tensors of 1 MiB or more, which start at a multiple of 4 KiB.
  ASSERT_EQ(results[0].size(), 6u);
  EXPECT_FALSE(results[0][0].is_tensor);
  EXPECT_FALSE(results[0][1].is_tensor);
  EXPECT_TRUE(results[0][2].is_tensor);
  const std::string file = ReadFile(dir + "/__0_0.distcp");
  int64_t at = 0;
  for (const WriteResult& r : results[0]) {
    EXPECT_EQ(r.storage.relative_path, "__0_0.distcp");
    if (r.is_tensor && r.storage.length > (1 << 20)) at = (at + 4095) / 4096 * 4096;
    EXPECT_EQ(r.storage.offset, at);
    at += r.storage.length;
    // Each item is a self-contained torch.save archive named "archive".
    const std::string head = file.substr(r.storage.offset, 30 + 16);
    EXPECT_EQ(head.substr(0, 4), std::string("PK\x03\x04", 4));
    EXPECT_EQ(head.substr(30, 16), "archive/data.pkl");
  }
  EXPECT_EQ(at, static_cast<int64_t>(file.size()));
}

// A tensor of 1 MiB or more has its data at a 4 KiB offset of the file, so
// that loads can read it with O_DIRECT; small items stay back to back, and
// Python's DCP reads the file either way (interop tests).
TEST(DcpTest, BigTensorDataIsPageAligned) {
  const std::string dir = FreshDir("aligned");
  const at::Tensor small = at::arange(7, at::kFloat);
  const at::Tensor big = at::arange(1 << 19, at::kFloat).mul(3.0f);  // 2 MiB
  auto results = WriteRankFile(dir, 0,
                               {WriteItem::Tensor("a", small), WriteItem::Tensor("big", big),
                                WriteItem::Tensor("b", small)});
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 3u);
  const std::string file = ReadFile(dir + "/__0_0.distcp");
  EXPECT_EQ((*results)[1].storage.offset % 4096, 0);
  const size_t data_at = file.find(std::string(static_cast<const char*>(big.data_ptr()) + 4, 256));
  ASSERT_NE(data_at, std::string::npos);
  EXPECT_EQ((data_at - 4) % 4096, 0u) << "big tensor data at file offset " << data_at - 4;
  EXPECT_EQ((*results)[2].storage.offset,
            (*results)[1].storage.offset + (*results)[1].storage.length);
}

TEST(DcpTest, ReadsBackAnyBoxBitExact) {
  const std::string dir = FreshDir("boxes");
  Source s;
  WriteThreeRanks(dir, s);
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  const CheckpointReader& reader = **r;

  std::vector<KeyInfo> keys = reader.Keys();
  ASSERT_EQ(keys.size(), 7u);
  const TensorStorageMetadata* mat = reader.FindTensor("model.mat");
  ASSERT_NE(mat, nullptr);
  EXPECT_EQ(mat->size, (std::vector<int64_t>{6, 8}));
  EXPECT_EQ(mat->chunks.size(), 3u);
  EXPECT_EQ(mat->properties.dtype, at::kDouble);
  EXPECT_EQ(reader.FindTensor("model.vec")->chunks.size(), 2u);
  EXPECT_TRUE(reader.IsBytes("epoch"));

  // Boxes of the 6x8 matrix: whole, rows across chunks, a column, an interior
  // box touching all three chunks, a single element, an empty box.
  const std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> boxes = {
      {{0, 0}, {6, 8}}, {{2, 0}, {2, 8}}, {{0, 6}, {6, 1}}, {{1, 2}, {4, 5}},
      {{4, 5}, {1, 1}}, {{3, 0}, {3, 8}}, {{0, 0}, {6, 4}}, {{2, 2}, {0, 3}}};
  for (const auto& [off, size] : boxes) {
    at::Tensor dst = at::full(size, -1.0, at::kDouble);
    absl::Status st = reader.ReadRegion("model.mat", off, size, dst);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_TRUE(SameTensor(dst, Box(s.mat, off, size))) << absl::StrJoin(off, ",") << " " << absl::StrJoin(size, ",");
  }
  // A non-contiguous destination, and a cast on the way.
  at::Tensor buf = at::zeros({8, 6}, at::kDouble);
  at::Tensor tdst = buf.t();
  ASSERT_TRUE(reader.ReadRegion("model.mat", {0, 0}, {6, 8}, tdst).ok());
  EXPECT_TRUE(SameTensor(buf.t(), s.mat));
  at::Tensor fdst = at::zeros({4, 5}, at::kFloat);
  ASSERT_TRUE(reader.ReadRegion("model.mat", {1, 2}, {4, 5}, fdst).ok());
  EXPECT_TRUE(SameTensor(fdst, Box(s.mat, {1, 2}, {4, 5}).to(at::kFloat)));

  // The 1-D tensor resharded into 3 "ranks" other than the 2 it was saved by.
  for (auto [off, len] : std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {4, 4}, {8, 2}}) {
    at::Tensor dst = at::empty({len}, at::kFloat);
    ASSERT_TRUE(reader.ReadRegion("model.vec", {off}, {len}, dst).ok());
    EXPECT_TRUE(SameTensor(dst, s.vec.narrow(0, off, len)));
  }
  absl::StatusOr<at::Tensor> bias = reader.ReadTensor("model.bias");
  ASSERT_TRUE(bias.ok()) << bias.status();
  EXPECT_TRUE(SameTensor(*bias, s.bias));
  absl::StatusOr<at::Tensor> step = reader.ReadTensor("optimizer.state.0.step");
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(SameTensor(*step, s.step));

  absl::StatusOr<Value> epoch = reader.ReadObject("epoch");
  ASSERT_TRUE(epoch.ok()) << epoch.status();
  EXPECT_EQ(epoch->as_int(), 7);
  absl::StatusOr<Value> name = reader.ReadObject("name");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(name->as_string(), "hello");
  absl::StatusOr<std::string> raw = reader.ReadBytes("name");
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->substr(0, 4), std::string("PK\x03\x04", 4));

  // Everything, nested as saved.
  absl::StatusOr<Value> all = reader.ReadStateDict();
  ASSERT_TRUE(all.ok()) << all.status();
  const Dict& root = all->as_dict();
  EXPECT_TRUE(SameTensor(root.Find("model")->as_dict().Find("mat")->as_tensor(), s.mat));
  const Value& groups = *root.Find("optimizer")->as_dict().Find("param_groups");
  ASSERT_TRUE(groups.is_list());
  EXPECT_DOUBLE_EQ(groups.items()[0].as_dict().Find("lr")->as_float(), 0.01);
  EXPECT_EQ(root.Find("name")->as_string(), "hello");
}

// Random grids of saved chunks, random boxes, random destinations (dtype,
// strides), small and default slab sizes: always bit-exact.
TEST(DcpTest, RandomReshardingIsBitExact) {
  std::mt19937 gen(7);
  auto uniform = [&](int64_t lo, int64_t hi) {  // [lo, hi]
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen);
  };
  for (int trial = 0; trial < 12; ++trial) {
    const std::string dir = FreshDir(absl::StrCat("random", trial));
    const int64_t nd = uniform(1, 3);
    std::vector<int64_t> size(nd);
    for (auto& x : size) x = uniform(1, 9);
    const at::ScalarType dtype = trial % 3 == 0 ? at::kFloat
                                 : trial % 3 == 1 ? at::kLong
                                                  : at::kBFloat16;
    at::Tensor full = at::randint(-1000, 1000, size, at::TensorOptions().dtype(at::kLong))
                          .to(dtype);
    // Split every dim at a random point (or not): a grid of blocks, each
    // written by its own "rank".
    std::vector<std::vector<std::pair<int64_t, int64_t>>> cuts(nd);
    for (int64_t d = 0; d < nd; ++d) {
      const int64_t at = uniform(0, size[d]);
      if (at > 0 && at < size[d]) {
        cuts[d] = {{0, at}, {at, size[d] - at}};
      } else {
        cuts[d] = {{0, size[d]}};
      }
    }
    std::vector<std::vector<WriteResult>> results;
    std::vector<size_t> pick(nd, 0);
    for (int rank = 0;; ++rank) {
      std::vector<int64_t> off(nd), len(nd);
      for (int64_t d = 0; d < nd; ++d) std::tie(off[d], len[d]) = cuts[d][pick[d]];
      absl::StatusOr<std::vector<WriteResult>> r =
          WriteRankFile(dir, rank, {WriteItem::Shard("t", Box(full, off, len), off, size)});
      ASSERT_TRUE(r.ok()) << r.status();
      results.push_back(*r);
      int64_t d = nd - 1;
      while (d >= 0 && ++pick[d] == cuts[d].size()) pick[d--] = 0;
      if (d < 0) break;
    }
    absl::StatusOr<Metadata> md = BuildMetadata(results);
    ASSERT_TRUE(md.ok()) << md.status();
    ASSERT_TRUE(WriteMetadata(dir, *md).ok());
    for (uint64_t slab : {uint64_t{16}, uint64_t{64} << 20}) {
      ReaderOptions options;
      options.slab_bytes = slab;
      absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(dir, options);
      ASSERT_TRUE(r.ok()) << r.status();
      for (int q = 0; q < 20; ++q) {
        std::vector<int64_t> off(nd), len(nd);
        for (int64_t d = 0; d < nd; ++d) {
          off[d] = uniform(0, size[d] - 1);
          len[d] = uniform(1, size[d] - off[d]);
        }
        at::Tensor dst;
        const int kind = q % 3;
        if (kind == 0) {
          dst = at::zeros(len, at::TensorOptions().dtype(dtype));
        } else if (kind == 1) {  // non-contiguous: a transposed buffer
          std::vector<int64_t> rev(len.rbegin(), len.rend());
          dst = at::zeros(rev, at::TensorOptions().dtype(dtype)).permute(
              [&] { std::vector<int64_t> p(nd); for (int64_t i = 0; i < nd; ++i) p[i] = nd - 1 - i; return p; }());
        } else {  // another dtype
          dst = at::zeros(len, at::TensorOptions().dtype(at::kDouble));
        }
        absl::Status st = (*r)->ReadRegion("t", off, len, dst);
        ASSERT_TRUE(st.ok()) << st;
        EXPECT_TRUE(SameTensor(dst, Box(full, off, len).to(dst.scalar_type())))
            << "trial " << trial << " box " << absl::StrJoin(off, ",") << " + "
            << absl::StrJoin(len, ",") << " slab " << slab;
      }
    }
  }
}

TEST(DcpTest, PythonLoadsOurCheckpoint) {
  const std::string dir = FreshDir("for_python");
  Source s;
  WriteThreeRanks(dir, s);
  Dict flat{{"model.vec", s.vec},
            {"model.mat", s.mat},
            {"model.bias", s.bias},
            {"optimizer.state.0.step", s.step},
            {"optimizer.param_groups.0.lr", 0.01},
            {"epoch", 7},
            {"name", "hello"}};
  const std::string expected = dir + "_expected.pt";
  ASSERT_TRUE(TorchSave(expected, Value(Dict{{"flat", Value(std::move(flat))}})).ok());
  std::string out;
  ASSERT_EQ(RunPython(absl::StrCat("load ", dir, " ", expected), &out), 0) << out;
  EXPECT_NE(out.find("OK 7"), std::string::npos) << out;
}

void ExpectMatchesExpected(const CheckpointReader& reader, const std::string& expected_path) {
  absl::StatusOr<Value> expected = TorchLoad(expected_path);
  ASSERT_TRUE(expected.ok()) << expected.status();
  const Dict& flat = expected->as_dict().Find("flat")->as_dict();
  EXPECT_EQ(reader.Keys().size(), flat.size());
  for (const auto& [k, v] : flat) {
    const std::string& key = k.as_string();
    if (v.is_tensor()) {
      absl::StatusOr<at::Tensor> t = reader.ReadTensor(key);
      ASSERT_TRUE(t.ok()) << t.status();
      EXPECT_TRUE(SameTensor(*t, v.as_tensor())) << key;
    } else {
      absl::StatusOr<Value> got = reader.ReadObject(key);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, v) << key << ": " << got->DebugString();
    }
  }
}

TEST(DcpTest, ReadsPythonSingleProcessCheckpoint) {
  const std::string dir = FreshDir("from_python");
  const std::string expected = dir + "_expected.pt";
  std::string out;
  ASSERT_EQ(RunPython(absl::StrCat("save ", dir, " ", expected), &out), 0) << out;
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectMatchesExpected(**r, expected);

  // A box of a chunk Python saved with non-contiguous strides.
  absl::StatusOr<at::Tensor> tr = (*r)->ReadTensor("model.transposed");
  ASSERT_TRUE(tr.ok()) << tr.status();
  at::Tensor part = at::zeros({2, 2});
  ASSERT_TRUE((*r)->ReadRegion("model.transposed", {1, 3}, {2, 2}, part).ok());
  EXPECT_TRUE(SameTensor(part, Box(*tr, {1, 3}, {2, 2})));

  absl::StatusOr<Value> all = (*r)->ReadStateDict();
  ASSERT_TRUE(all.ok()) << all.status();
  const Dict& root = all->as_dict();
  const Value& group = root.Find("optimizer")->as_dict().Find("param_groups")->items()[0];
  EXPECT_EQ(*group.as_dict().Find("betas"), Value::Tuple({0.9, 0.999}));
  EXPECT_EQ(root.Find("buffers")->items().size(), 2u);
  EXPECT_EQ(root.Find("name")->as_string(), "run-1");
  ASSERT_TRUE((*r)->metadata().storage_meta.has_value());
  EXPECT_EQ((*r)->metadata().storage_meta->checkpoint_id, dir);
}

TEST(DcpTest, ReadsPythonTwoRankShardedCheckpoint) {
  const std::string dir = FreshDir("from_python_dist");
  const std::string expected = dir + "_expected.pt";
  std::string out;
  ASSERT_EQ(RunPython(absl::StrCat("save_dist ", dir, " ", expected), &out), 0) << out;
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->FindTensor("model.rows")->chunks.size(), 2u);
  EXPECT_EQ((*r)->FindTensor("model.cols")->chunks.size(), 2u);
  ExpectMatchesExpected(**r, expected);
  // Boxes across the saved shards (rows split 4+3, columns split 3+3).
  at::Tensor cols = at::arange(24, at::kDouble).reshape({4, 6});
  at::Tensor dst = at::zeros({3, 4}, at::kDouble);
  ASSERT_TRUE((*r)->ReadRegion("model.cols", {1, 1}, {3, 4}, dst).ok());
  EXPECT_TRUE(SameTensor(dst, Box(cols, {1, 1}, {3, 4})));
  at::Tensor rows = at::arange(35, at::kFloat).reshape({7, 5});
  at::Tensor dst2 = at::zeros({3, 2});
  ASSERT_TRUE((*r)->ReadRegion("model.rows", {2, 3}, {3, 2}, dst2).ok());
  EXPECT_TRUE(SameTensor(dst2, Box(rows, {2, 3}, {3, 2})));
}

TEST(DcpTest, MissingMetadataMeansIncomplete) {
  const std::string dir = FreshDir("incomplete");
  Source s;
  ASSERT_TRUE(WriteRankFile(dir, 0, ThreeRankItems(s)[0]).ok());
  absl::Status st = CheckpointReader::Open(dir).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(st.message(), absl::StrCat("incomplete checkpoint (no .metadata): ", dir));
  EXPECT_FALSE(CheckpointReader::Open(dir + "_nonexistent").ok());
}

TEST(DcpTest, MissingShardFileNamesFileAndKey) {
  const std::string dir = FreshDir("missing_shard");
  Source s;
  WriteThreeRanks(dir, s);
  fs::remove(dir + "/__2_0.distcp");
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  at::Tensor dst = at::zeros({6, 8}, at::kDouble);
  absl::Status st = (*r)->ReadTensorInto("model.mat", dst);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("__2_0.distcp"), std::string::npos) << st;
  EXPECT_NE(st.message().find("model.mat"), std::string::npos) << st;
  // Boxes that need only the other files still read.
  at::Tensor top = at::zeros({3, 8}, at::kDouble);
  ASSERT_TRUE((*r)->ReadRegion("model.mat", {0, 0}, {3, 8}, top).ok());
  EXPECT_TRUE(SameTensor(top, s.mat.narrow(0, 0, 3)));
}

TEST(DcpTest, TruncatedOrCorruptShardIsAnError) {
  const std::string dir = FreshDir("truncated");
  Source s;
  auto results = WriteThreeRanks(dir, s);
  const std::string path = dir + "/__1_0.distcp";
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  // Cut rank 1's file in the middle of its bytes item "name" (its tensors follow).
  const StorageInfo* name = (*r)->metadata().FindStorage({"name", std::nullopt, std::nullopt});
  ASSERT_NE(name, nullptr);
  EXPECT_EQ(name->relative_path, "__1_0.distcp");
  fs::resize_file(path, name->offset + name->length / 2);
  // Every load cross-checks .metadata against the files it names: the cut
  // file is refused when the folder is opened, naming the file and a key.
  r = CheckpointReader::Open(dir);
  ASSERT_FALSE(r.ok());
  absl::Status st = r.status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find("truncated"), std::string::npos) << st;
  EXPECT_NE(st.message().find("__1_0.distcp"), std::string::npos) << st;
  EXPECT_NE(st.message().find("model.vec"), std::string::npos) << st;

  // Garbage in place of every archive of rank 0's file: errors, no crash.
  const std::string dir2 = FreshDir("corrupt");
  WriteThreeRanks(dir2, s);
  {
    std::fstream f(dir2 + "/__0_0.distcp", std::ios::in | std::ios::out | std::ios::binary);
    const std::string junk(fs::file_size(dir2 + "/__0_0.distcp"), 'x');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  r = CheckpointReader::Open(dir2);
  ASSERT_TRUE(r.ok()) << r.status();
  at::Tensor b = at::zeros({5}, at::kBFloat16);
  st = (*r)->ReadTensorInto("model.bias", b);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("model.bias"), std::string::npos) << st;
  EXPECT_FALSE((*r)->ReadObject("epoch").ok());
}

TEST(DcpTest, ChunksThatDoNotCoverAreAnError) {
  const std::string dir = FreshDir("gap");
  Source s;
  auto results = WriteThreeRanks(dir, s);
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(dir);
  ASSERT_TRUE(r.ok());
  Metadata md = (*r)->metadata();
  for (auto& [fqn, entry] : md.state_dict_metadata) {
    if (fqn == "model.mat") std::get<TensorStorageMetadata>(entry).chunks.pop_back();
  }
  ASSERT_TRUE(WriteMetadata(dir, md).ok());
  // Chunk coverage is checked when the folder is opened, as verify does.
  r = CheckpointReader::Open(dir);
  ASSERT_FALSE(r.ok());
  const absl::Status st = r.status();
  EXPECT_NE(st.message().find("cover"), std::string::npos) << st;
  EXPECT_NE(st.message().find("model.mat"), std::string::npos) << st;
  EXPECT_NE(st.message().find(".metadata"), std::string::npos) << st;

  // BuildMetadata refuses gaps, overlaps and disagreeing ranks.
  std::vector<std::vector<WriteResult>> gap = {results[0], results[1]};
  EXPECT_FALSE(BuildMetadata(gap).ok());
  std::vector<std::vector<WriteResult>> overlap = results;
  overlap[2][0].index.offset = std::vector<int64_t>{2, 5};
  EXPECT_FALSE(BuildMetadata(overlap).ok());
  std::vector<std::vector<WriteResult>> dtype = results;
  dtype[2][0].properties.dtype = at::kFloat;
  EXPECT_FALSE(BuildMetadata(dtype).ok());
}

TEST(DcpTest, BadArgumentsAreErrors) {
  const std::string dir = FreshDir("bad_args");
  Source s;
  WriteThreeRanks(dir, s);
  absl::StatusOr<std::unique_ptr<CheckpointReader>> r = CheckpointReader::Open(dir);
  ASSERT_TRUE(r.ok());
  at::Tensor dst = at::zeros({2, 2}, at::kDouble);
  EXPECT_FALSE((*r)->ReadRegion("model.mat", {5, 0}, {2, 2}, dst).ok());  // out of bounds
  EXPECT_FALSE((*r)->ReadRegion("model.mat", {0, 0}, {2, 3}, dst).ok());  // wrong dst shape
  EXPECT_FALSE((*r)->ReadRegion("model.mat", {0}, {2}, dst).ok());        // wrong rank
  EXPECT_EQ((*r)->ReadRegion("nope", {0}, {2}, dst).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE((*r)->ReadRegion("epoch", {}, {}, dst).ok());
  EXPECT_FALSE((*r)->ReadBytes("model.mat").ok());

  absl::Status st =
      WriteRankFile(dir, 5, {WriteItem::Shard("w", at::zeros({3}), {8}, {10})}).status();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("'w'"), std::string::npos) << st;
  EXPECT_FALSE(fs::exists(dir + "/__5_0.distcp"));  // nothing left behind
}

TEST(DcpTest, StaleFilesAndPreparation) {
  const std::string dir = FreshDir("stale");
  Source s;
  WriteThreeRanks(dir, s);
  ASSERT_TRUE(WriteRankFile(dir, 12, {WriteItem::Tensor("x", at::ones({2}))}).ok());
  { std::ofstream(dir + "/.__1_0.distcp.tmp.123.abc") << "partial"; }
  { std::ofstream(dir + "/meta.pt") << "lightning's"; }
  ASSERT_TRUE(RemoveStaleRankFiles(dir, 2).ok());
  EXPECT_TRUE(fs::exists(dir + "/__0_0.distcp"));
  EXPECT_TRUE(fs::exists(dir + "/__1_0.distcp"));
  EXPECT_FALSE(fs::exists(dir + "/__2_0.distcp"));
  EXPECT_FALSE(fs::exists(dir + "/__12_0.distcp"));
  EXPECT_FALSE(fs::exists(dir + "/.__1_0.distcp.tmp.123.abc"));
  EXPECT_TRUE(fs::exists(dir + "/meta.pt"));
  EXPECT_TRUE(fs::exists(dir + "/.metadata"));
  ASSERT_TRUE(PrepareCheckpointDir(dir).ok());
  EXPECT_FALSE(fs::exists(dir + "/.metadata"));
  EXPECT_EQ(CheckpointReader::Open(dir).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(PrepareCheckpointDir(dir + "/new/nested").ok());
  EXPECT_TRUE(fs::is_directory(dir + "/new/nested"));
}

TEST(DcpTest, WriteResultsTravelAsBytes) {
  const std::string dir = FreshDir("encode");
  Source s;
  auto results = WriteThreeRanks(dir, s);
  std::vector<std::vector<WriteResult>> decoded;
  for (const auto& rank : results) {
    absl::StatusOr<std::string> bytes = EncodeWriteResults(rank);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    absl::StatusOr<std::vector<WriteResult>> back = DecodeWriteResults(*bytes);
    ASSERT_TRUE(back.ok()) << back.status();
    decoded.push_back(*back);
  }
  absl::StatusOr<Metadata> a = BuildMetadata(results);
  absl::StatusOr<Metadata> b = BuildMetadata(decoded);
  ASSERT_TRUE(a.ok() && b.ok());
  absl::StatusOr<std::string> pa = SerializeMetadata(*a);
  absl::StatusOr<std::string> pb = SerializeMetadata(*b);
  ASSERT_TRUE(pa.ok() && pb.ok());
  EXPECT_EQ(*pa, *pb);
  EXPECT_FALSE(DecodeWriteResults("garbage").ok());
}

}  // namespace
}  // namespace fabric::dcp

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s PYTHON SCRIPT\n", argv[0]);
    return 2;
  }
  fabric::dcp::g_python = argv[1];
  fabric::dcp::g_script = argv[2];
  return RUN_ALL_TESTS();
}
