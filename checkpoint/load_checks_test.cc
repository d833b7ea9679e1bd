// Every byte matters: single-file and sharded checkpoints with one byte
// flipped at every position are refused by every load that reads the byte,
// with a message naming the file and the key, or (bytes no load uses) load
// exactly the original values; loads of other keys still succeed; truncated
// files and a shard file of another checkpoint are refused.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/dcp_writer.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "checkpoint/zip_reader.h"

namespace fabric {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void Spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string TestDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = absl::StrCat(tmp ? tmp : "/tmp", "/", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Drops path's pages from the page cache, so that the next read is cold.
void DropCache(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << path;
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

// Bitwise equality of two loaded trees (tensors by their bytes).
bool SameValue(const Value& a, const Value& b) {
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::kTensor: {
      const at::Tensor& x = a.as_tensor();
      const at::Tensor& y = b.as_tensor();
      return x.scalar_type() == y.scalar_type() && x.sizes() == y.sizes() &&
             at::equal(x.contiguous().view(at::kByte), y.contiguous().view(at::kByte));
    }
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      if (a.items().size() != b.items().size()) return false;
      for (size_t i = 0; i < a.items().size(); ++i) {
        if (!SameValue(a.items()[i], b.items()[i])) return false;
      }
      return true;
    }
    case Value::Kind::kDict: {
      if (a.as_dict().size() != b.as_dict().size()) return false;
      for (const auto& [k, v] : a.as_dict()) {
        const Value* w = b.as_dict().Find(k);
        if (!w || !SameValue(v, *w)) return false;
      }
      return true;
    }
    default:
      return a.DebugString() == b.DebugString();
  }
}

Value SmallState() {
  at::manual_seed(12);
  Dict model{{"fc.weight", Value(at::randn({8, 4}))}, {"fc.bias", Value(at::randn({8}))}};
  Dict exp_avg{{"exp_avg", Value(at::randn({8, 4}))}, {"step", Value(3)}};
  Dict opt_state{{Value(0), Value(std::move(exp_avg))}};
  Dict optimizer{{"state", Value(std::move(opt_state))}};
  return Value(Dict{{"model", Value(std::move(model))},
                    {"optimizer", Value(std::move(optimizer))},
                    {"step", Value(100)}});
}

TEST(LoadChecks, SingleFileEveryByteFlipped) {
  const std::string dir = TestDir("single");
  const std::string path = dir + "/ckpt.pt";
  ASSERT_TRUE(TorchSave(path, SmallState()).ok());
  absl::StatusOr<Value> original = TorchLoad(path);
  ASSERT_TRUE(original.ok()) << original.status();
  const std::string bytes = Slurp(path);

  // Which key each record's bytes belong to.
  absl::StatusOr<std::unique_ptr<TorchFile>> file = TorchFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  struct Range {
    uint64_t begin, end;
    std::string record, key;
  };
  std::vector<Range> records;
  for (const ZipReader::Entry& e : (*file)->zip().entries()) {
    std::string key;
    if (e.name.rfind("data/", 0) == 0) key = (*file)->KeyOf(e.name.substr(5));
    records.push_back({e.data_offset, e.data_offset + e.size, e.name, key});
  }

  const std::string flipped = dir + "/flipped.pt";
  int refused = 0, same = 0;
  for (size_t pos = 0; pos < bytes.size(); ++pos) {
    std::string b = bytes;
    b[pos] = static_cast<char>(b[pos] ^ 0x10);
    Spit(flipped, b);
    const Range* in = nullptr;
    for (const Range& r : records) {
      if (pos >= r.begin && pos < r.end) in = &r;
    }
    absl::StatusOr<Value> loaded = TorchLoad(flipped);
    // A full load reads data.pkl, byteorder and every storage; the small
    // version records it does not read are not checked.
    if (in && (in->record == "data.pkl" || in->record == "byteorder" || !in->key.empty())) {
      ASSERT_FALSE(loaded.ok()) << "byte " << pos << " of record " << in->record;
      EXPECT_NE(loaded.status().message().find(flipped), std::string::npos) << loaded.status();
      if (!in->key.empty()) {
        EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss) << loaded.status();
        EXPECT_NE(loaded.status().message().find("'" + in->key + "'"), std::string::npos)
            << loaded.status();
        // The other keys still load; this one does not.
        absl::StatusOr<std::unique_ptr<TorchFile>> f = TorchFile::Open(flipped);
        ASSERT_TRUE(f.ok()) << f.status();
        const Dict& model = (*f)->root().as_dict().Find("model")->as_dict();
        for (const char* k : {"fc.weight", "fc.bias"}) {
          const TensorRef& ref = model.Find(k)->as_tensor_ref();
          at::Tensor dst = at::empty(ref.sizes, at::kFloat);
          absl::Status s = (*f)->ReadInto(ref, dst);
          if (in->key == absl::StrCat("model.", k)) {
            EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
          } else {
            EXPECT_TRUE(s.ok()) << "byte " << pos << ": " << s;
          }
        }
      }
    }
    if (loaded.ok()) {
      // A byte no load uses (a field of a header we do not read): the values
      // are exactly the original ones.
      ASSERT_TRUE(SameValue(*loaded, *original)) << "byte " << pos << " changed the values";
      ++same;
    } else {
      ++refused;
    }
  }
  // Most of a small file is headers; all record bytes were refused above.
  EXPECT_GT(refused, static_cast<int>(bytes.size() / 2));
  std::cout << bytes.size() << " bytes: " << refused << " flips refused, " << same
            << " in bytes no load uses\n";

  // Checks off: the same flip in a tensor loads (the user asked not to check).
  std::string b = bytes;
  const Range& weight = *std::find_if(records.begin(), records.end(),
                                      [](const Range& r) { return r.key == "model.fc.weight"; });
  b[weight.begin] = static_cast<char>(b[weight.begin] ^ 0x10);
  Spit(flipped, b);
  TorchLoadOptions off;
  off.verify_checksums = false;
  EXPECT_TRUE(TorchLoad(flipped, c10::kCPU, off).ok());
  EXPECT_FALSE(TorchLoad(flipped).ok());
}

TEST(LoadChecks, TruncatedSingleFileIsRefused) {
  const std::string dir = TestDir("truncated");
  const std::string path = dir + "/ckpt.pt";
  ASSERT_TRUE(TorchSave(path, SmallState()).ok());
  const std::string bytes = Slurp(path);
  for (size_t keep : {bytes.size() - 1, bytes.size() / 2, size_t{100}, size_t{0}}) {
    Spit(path, bytes.substr(0, keep));
    absl::StatusOr<Value> v = TorchLoad(path);
    EXPECT_FALSE(v.ok()) << keep;
    if (!v.ok()) {
      EXPECT_NE(v.status().message().find(path), std::string::npos) << v.status();
    }
  }
}

// Records bigger than one read piece (16 MiB) are read and checksummed in
// steps (256 KiB): a flip at the edges of steps and pieces is caught too.
TEST(LoadChecks, LargeRecordFlippedAtStepAndPieceEdgesIsRefused) {
  const std::string dir = TestDir("large");
  const std::string path = dir + "/ckpt.pt";
  at::manual_seed(5);
  const at::Tensor big = at::randn({10 << 20});  // 40 MiB: three pieces
  ASSERT_TRUE(TorchSave(path, Value(Dict{{"big", Value(big)}})).ok());
  const std::string bytes = Slurp(path);
  absl::StatusOr<std::unique_ptr<TorchFile>> file = TorchFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const ZipReader::Entry* data = nullptr;  // the tensor's record: the largest
  for (const ZipReader::Entry& e : (*file)->zip().entries()) {
    if (!data || e.size > data->size) data = &e;
  }
  ASSERT_NE(data, nullptr);
  ASSERT_EQ(data->size, big.numel() * 4u);
  EXPECT_EQ(data->data_offset % 4096, 0u);
  const uint64_t step = 256 << 10, piece = 16 << 20;
  const std::string flipped = dir + "/flipped.pt";
  for (uint64_t at : {uint64_t{0}, step - 1, step, piece - 1, piece, 2 * piece + 3 * step + 7,
                      data->size - 1}) {
    std::string b = bytes;
    b[data->data_offset + at] = static_cast<char>(b[data->data_offset + at] ^ 0x01);
    Spit(flipped, b);
    // From the page cache, and cold: then the record (4 KiB-aligned in the
    // file) is read with O_DIRECT into a page-aligned tensor.
    for (bool cold : {false, true}) {
      if (cold) DropCache(flipped);
      absl::StatusOr<Value> loaded = TorchLoad(flipped);
      ASSERT_FALSE(loaded.ok()) << "flip at byte " << at << " of the record loaded"
                                << (cold ? " cold" : "");
      EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss) << loaded.status();
      EXPECT_NE(loaded.status().message().find("'big'"), std::string::npos) << loaded.status();
      EXPECT_NE(loaded.status().message().find(flipped), std::string::npos) << loaded.status();
    }
  }
  DropCache(path);
  absl::StatusOr<Value> intact = TorchLoad(path);
  ASSERT_TRUE(intact.ok()) << intact.status();
  EXPECT_TRUE(at::equal(intact->as_dict().Find("big")->as_tensor(), big));
}

// Two ranks' shards of "model.w" (rows 0-3 and 4-7), "model.b" whole on
// rank 0, a bytes value on rank 1.
void WriteSharded(const std::string& dir, int seed) {
  at::manual_seed(seed);
  const at::Tensor w = at::randn({8, 4});
  const at::Tensor bias = at::randn({6});
  std::vector<std::vector<dcp::WriteItem>> items(2);
  items[0] = {dcp::WriteItem::Shard("model.w", w.narrow(0, 0, 4), {0, 0}, {8, 4}),
              dcp::WriteItem::Tensor("model.b", bias)};
  items[1] = {dcp::WriteItem::Shard("model.w", w.narrow(0, 4, 4), {4, 0}, {8, 4}),
              dcp::WriteItem::Object("epoch", Value(static_cast<int64_t>(seed)))};
  std::vector<std::vector<dcp::WriteResult>> results;
  for (int rank = 0; rank < 2; ++rank) {
    absl::StatusOr<std::vector<dcp::WriteResult>> r = dcp::WriteRankFile(dir, rank, items[rank]);
    ASSERT_TRUE(r.ok()) << r.status();
    results.push_back(*r);
  }
  absl::StatusOr<dcp::Metadata> md = dcp::BuildMetadata(results, dcp::NewStorageMeta(dir));
  ASSERT_TRUE(md.ok()) << md.status();
  ASSERT_TRUE(dcp::WriteMetadata(dir, *md).ok());
}

absl::StatusOr<Value> LoadAll(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<dcp::CheckpointReader>> r = dcp::CheckpointReader::Open(dir);
  if (!r.ok()) return r.status();
  return (*r)->ReadStateDict();
}

TEST(LoadChecks, ShardedEveryByteFlipped) {
  const std::string dir = TestDir("sharded");
  WriteSharded(dir, 1);
  absl::StatusOr<Value> original = LoadAll(dir);
  ASSERT_TRUE(original.ok()) << original.status();
  absl::StatusOr<std::unique_ptr<dcp::CheckpointReader>> reader = dcp::CheckpointReader::Open(dir);
  ASSERT_TRUE(reader.ok());
  const dcp::Metadata md = (*reader)->metadata();

  for (const char* name : {"__0_0.distcp", "__1_0.distcp", ".metadata"}) {
    const std::string path = absl::StrCat(dir, "/", name);
    const std::string bytes = Slurp(path);
    int refused = 0, same = 0;
    for (size_t pos = 0; pos < bytes.size(); ++pos) {
      std::string b = bytes;
      b[pos] = static_cast<char>(b[pos] ^ 0x10);
      Spit(path, b);
      absl::StatusOr<Value> loaded = LoadAll(dir);
      if (std::string(name) != ".metadata") {
        // Our writer records every item's CRC: every byte of an item is checked.
        const dcp::StorageInfo* item = nullptr;
        std::string fqn;
        for (const auto& [index, info] : md.storage_data) {
          if (info.relative_path == name && pos >= static_cast<uint64_t>(info.offset) &&
              pos < static_cast<uint64_t>(info.offset + info.length)) {
            item = &info;
            fqn = index.fqn;
          }
        }
        ASSERT_NE(item, nullptr) << name << " byte " << pos << " belongs to no item";
        ASSERT_FALSE(loaded.ok()) << name << " byte " << pos << " (key " << fqn << ")";
        EXPECT_NE(loaded.status().message().find(path), std::string::npos) << loaded.status();
        EXPECT_NE(loaded.status().message().find("'" + fqn + "'"), std::string::npos)
            << loaded.status();
        // Keys stored elsewhere still load.
        absl::StatusOr<std::unique_ptr<dcp::CheckpointReader>> r = dcp::CheckpointReader::Open(dir);
        ASSERT_TRUE(r.ok()) << r.status();
        for (const char* key : {"model.w", "model.b"}) {
          absl::StatusOr<at::Tensor> t = (*r)->ReadTensor(key);
          bool touches = false;
          for (const auto& [index, info] : md.storage_data) {
            touches = touches || (index.fqn == key && &info == item);
          }
          if (touches) {
            EXPECT_FALSE(t.ok()) << name << " byte " << pos;
          } else {
            EXPECT_TRUE(t.ok()) << name << " byte " << pos << ": " << t.status();
          }
        }
      }
      if (loaded.ok()) {
        ASSERT_TRUE(SameValue(*loaded, *original)) << name << " byte " << pos;
        ++same;
      } else {
        ++refused;
      }
    }
    Spit(path, bytes);
    std::cout << name << ": " << bytes.size() << " bytes, " << refused << " flips refused, "
              << same << " in bytes no load uses\n";
  }
}

TEST(LoadChecks, TruncatedOrSwappedShardIsRefused) {
  const std::string a = TestDir("swap_a"), b = TestDir("swap_b");
  WriteSharded(a, 1);
  WriteSharded(b, 2);  // same layout, other values
  ASSERT_TRUE(LoadAll(a).ok());
  const std::string shard = Slurp(a + "/__0_0.distcp");

  // A shard file of the other checkpoint: same sizes, so only the item CRCs
  // tell.
  fs::copy_file(b + "/__0_0.distcp", a + "/__0_0.distcp", fs::copy_options::overwrite_existing);
  absl::StatusOr<Value> swapped = LoadAll(a);
  ASSERT_FALSE(swapped.ok());
  EXPECT_EQ(swapped.status().code(), absl::StatusCode::kDataLoss) << swapped.status();
  EXPECT_NE(swapped.status().message().find("another checkpoint"), std::string::npos)
      << swapped.status();

  // Truncated: refused when the folder is opened (metadata vs file sizes).
  Spit(a + "/__0_0.distcp", shard.substr(0, shard.size() - 1));
  absl::StatusOr<std::unique_ptr<dcp::CheckpointReader>> r = dcp::CheckpointReader::Open(a);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("truncated shard file"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace fabric
