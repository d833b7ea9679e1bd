// `fabric verify` and `fabric inspect` on good checkpoints and on damaged ones.
#include "tools/verify.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <variant>

#include <ATen/ops/arange.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/file_io.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/zip_reader.h"
#include "tools/consolidate.h"
#include "tools/inspect.h"
#include "tools/test_util.h"

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;

std::string Contents(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void FlipByte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

// The absolute file offset of the first tensor byte of `fqn`'s first chunk.
uint64_t TensorDataOffset(const std::string& dir, const std::string& fqn, std::string* file) {
  absl::StatusOr<Inspection> in = Inspect(dir);
  EXPECT_TRUE(in.ok()) << in.status();
  for (const TensorEntry& t : in->tensors) {
    if (t.key != fqn) continue;
    const ChunkLayout& c = t.chunks.back();
    *file = (fs::path(dir) / c.file).string();
    auto reader = FileReader::Open(*file);
    EXPECT_TRUE(reader.ok());
    auto archive = TorchFile::Open(*reader, c.offset, c.length);
    EXPECT_TRUE(archive.ok()) << archive.status();
    return (*archive)->zip().Find("data/0")->data_offset;
  }
  ADD_FAILURE() << "no key " << fqn;
  return 0;
}

absl::Status Rewrite(const std::string& dir, const std::function<void(dcp::Metadata&)>& edit) {
  const std::string path = dir + "/.metadata";
  FABRIC_ASSIGN_OR_RETURN(dcp::Metadata md, dcp::ParseMetadata(Contents(path), path));
  edit(md);
  FABRIC_ASSIGN_OR_RETURN(const std::string bytes, dcp::SerializeMetadata(md));
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return absl::OkStatus();
}

dcp::TensorStorageMetadata& TensorMd(dcp::Metadata& md, const std::string& fqn) {
  for (auto& [k, v] : md.state_dict_metadata) {
    if (k == fqn) return std::get<dcp::TensorStorageMetadata>(v);
  }
  ADD_FAILURE() << "no key " << fqn;
  static dcp::TensorStorageMetadata none;
  return none;
}

std::string Checkpoint(const std::string& name, int world = 3) {
  const std::string dir = FreshTestPath(name);
  EXPECT_TRUE(WriteTestCheckpoint(dir, world, true).ok());
  return dir;
}

TEST(Verify, GoodCheckpointsPass) {
  for (int world : {1, 2, 3}) {
    const std::string dir = Checkpoint(absl::StrCat("good", world), world);
    uint64_t done = 0, total = 0;
    VerifyOptions options;
    options.progress = [&](uint64_t d, uint64_t t) {
      done = d;
      total = t;
    };
    absl::StatusOr<VerifyReport> r = Verify(dir, options);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->format, "sharded");
    EXPECT_GT(r->records, 0);
    EXPECT_GT(r->bytes, 0u);
    EXPECT_GT(done, 0u);
    EXPECT_LE(done, total);

    absl::StatusOr<ConsolidateStats> c = Consolidate(dir);
    ASSERT_TRUE(c.ok()) << c.status();
    r = Verify(c->output_file);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->format, "single-file");
    EXPECT_EQ(r->keys, 5);
  }
}

TEST(Verify, FlippedTensorByteIsACrcError) {
  const std::string dir = Checkpoint("flip");
  std::string file;
  const uint64_t off = TensorDataOffset(dir, "model.emb", &file);
  FlipByte(file, off + 3);
  absl::StatusOr<VerifyReport> r = Verify(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("CRC-32 mismatch"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("model.emb"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find(file), std::string::npos) << r.status();
}

TEST(Verify, TruncatedShard) {
  const std::string dir = Checkpoint("trunc");
  const std::string file = dir + "/__1_0.distcp";
  fs::resize_file(file, fs::file_size(file) / 2);
  absl::StatusOr<VerifyReport> r = Verify(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("truncated shard file " + file), std::string::npos)
      << r.status();
}

TEST(Verify, MissingShard) {
  const std::string dir = Checkpoint("missing");
  fs::remove(dir + "/__2_0.distcp");
  absl::StatusOr<VerifyReport> r = Verify(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsNotFound(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("missing shard file " + dir + "/__2_0.distcp"),
            std::string::npos)
      << r.status();
}

TEST(Verify, MissingMetadata) {
  const std::string dir = Checkpoint("nometadata");
  fs::remove(dir + "/.metadata");
  absl::StatusOr<VerifyReport> r = Verify(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("incomplete checkpoint (no .metadata)"), std::string::npos)
      << r.status();
}

TEST(Verify, ChunksThatDoNotCoverTheTensor) {
  const std::string dir = Checkpoint("gap");
  ASSERT_TRUE(Rewrite(dir, [](dcp::Metadata& md) {
                TensorMd(md, "model.emb").size[0] += 2;  // rows no chunk holds
              }).ok());
  absl::StatusOr<VerifyReport> r = Verify(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("key 'model.emb': chunks cover"), std::string::npos)
      << r.status();
}

TEST(Verify, OverlappingChunks) {
  const std::string dir = Checkpoint("overlap");
  ASSERT_TRUE(Rewrite(dir, [](dcp::Metadata& md) {
                auto& t = TensorMd(md, "model.emb");
                t.chunks[1].offsets[0] -= 1;  // overlaps chunk 0 by a row
                for (auto& [index, info] : md.storage_data) {
                  if (index.fqn == "model.emb" && index.offset &&
                      (*index.offset)[0] == t.chunks[1].offsets[0] + 1) {
                    (*index.offset)[0] -= 1;
                  }
                }
              }).ok());
  absl::StatusOr<VerifyReport> r = Verify(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("overlap"), std::string::npos) << r.status();
}

TEST(Verify, DtypeDisagreesWithMetadata) {
  const std::string dir = Checkpoint("dtype");
  ASSERT_TRUE(Rewrite(dir, [](dcp::Metadata& md) {
                TensorMd(md, "model.layer.weight").properties.dtype = at::kDouble;
              }).ok());
  absl::StatusOr<VerifyReport> r = Verify(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("dtype"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("model.layer.weight"), std::string::npos) << r.status();
}

TEST(Verify, RangePastTheEndOfItsFile) {
  const std::string dir = Checkpoint("range");
  ASSERT_TRUE(Rewrite(dir, [](dcp::Metadata& md) {
                md.storage_data.back().second.length += 1 << 20;
              }).ok());
  absl::StatusOr<VerifyReport> r = Verify(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("truncated shard file"), std::string::npos) << r.status();
}

TEST(Verify, SingleFileCrcAndTruncation) {
  const std::string dir = Checkpoint("single");
  absl::StatusOr<ConsolidateStats> c = Consolidate(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string file = c->output_file;
  auto reader = FileReader::Open(file);
  ASSERT_TRUE(reader.ok());
  auto zip = ZipReader::Open(*reader);
  ASSERT_TRUE(zip.ok());
  const uint64_t off = (*zip)->Find("data/0")->data_offset;
  FlipByte(file, off);
  absl::StatusOr<VerifyReport> r = Verify(file);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("CRC-32 mismatch in record 'data/0'"), std::string::npos)
      << r.status();

  fs::resize_file(file, fs::file_size(file) - 100);
  r = Verify(file);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(file), std::string::npos) << r.status();
}

TEST(Inspect, ShardedLayoutAndJson) {
  const std::string dir = Checkpoint("inspect");
  absl::StatusOr<Inspection> in = Inspect(dir + "/");
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->format, "sharded");
  ASSERT_TRUE(in->world_size.has_value());
  EXPECT_EQ(*in->world_size, 3);
  bool saw_cols = false, saw_views = false;
  for (const TensorEntry& t : in->tensors) {
    if (t.key == "model.cols") {
      saw_cols = true;
      EXPECT_EQ(t.dtype, at::kLong);
      EXPECT_EQ(t.shape, (std::vector<int64_t>{4, 6}));
      EXPECT_EQ(t.nbytes, 4u * 6 * 8);
      ASSERT_EQ(t.chunks.size(), 3u);
      EXPECT_EQ(t.chunks[1].offsets, (std::vector<int64_t>{0, 2}));
      EXPECT_EQ(t.chunks[1].sizes, (std::vector<int64_t>{4, 2}));
      EXPECT_EQ(t.chunks[1].file, "__1_0.distcp");
      EXPECT_GT(t.chunks[1].length, 0);
    }
    if (t.key == "views.1") {
      saw_views = true;
      EXPECT_EQ(t.source, "meta.pt");
      EXPECT_EQ(t.shape, (std::vector<int64_t>{6}));
    }
  }
  EXPECT_TRUE(saw_cols);
  EXPECT_TRUE(saw_views);
  bool saw_lr = false;
  for (const ObjectEntry& o : in->objects) {
    if (o.key == "optimizer.param_groups.0.lr") {
      saw_lr = true;
      EXPECT_EQ(o.type, "float");
    }
  }
  EXPECT_TRUE(saw_lr);
  const std::string json = InspectionJson(*in);
  EXPECT_NE(json.find("\"world_size\":3"), std::string::npos);
  EXPECT_NE(json.find("\"key\":\"model.cols\""), std::string::npos);
  const std::string text = InspectionText(*in);
  EXPECT_NE(text.find("world size: 3"), std::string::npos);
  EXPECT_NE(text.find("model.emb  float64  [13, 4, 3]"), std::string::npos) << text;

  EXPECT_EQ(JsonString("a\"b\\\n\x01"), "\"a\\\"b\\\\\\n\\u0001\"");
}

TEST(Inspect, SingleFile) {
  const std::string dir = Checkpoint("inspect_single", 2);
  absl::StatusOr<ConsolidateStats> c = Consolidate(dir);
  ASSERT_TRUE(c.ok());
  absl::StatusOr<Inspection> in = Inspect(c->output_file);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->format, "single-file");
  EXPECT_FALSE(in->world_size.has_value());
  EXPECT_EQ(InspectionJson(*in).find("\"world_size\":null") != std::string::npos, true);
  int tensors = 0;
  for (const TensorEntry& t : in->tensors) {
    tensors += 1;
    EXPECT_TRUE(t.chunks.empty());
  }
  EXPECT_EQ(tensors, 12);  // 5 model + 4 optimizer state + scale + 2 views
}

// Keys that JSON must escape (quote, backslash, control characters) and
// non-ASCII text come back unchanged through a real JSON parser; bytes that
// are not UTF-8 are replaced rather than breaking the document.
TEST(Inspect, JsonEscapesKeysAndValues) {
  const std::string dir = ::testing::TempDir() + "/inspect_json_escape";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string file = dir + "/weird.pt";
  const std::string tensor_key = "w\"eird\\key\n\t\x01\x1f";
  const std::string object_key = "gr\xc3\xbc\xc3\x9f" "e \xe2\x82\xac \xf0\x9f\x94\xa5";
  const std::string object_text = "line1\nline2 \"quoted\" \\ \xe6\x97\xa5\xe6\x9c\xac";
  Dict state;
  state.Set(tensor_key, Value(at::arange(6, at::kFloat).reshape({2, 3})));
  state.Set(object_key, Value(object_text));
  state.Set("broken", Value(std::string("ok\xff\xfe")));
  ASSERT_TRUE(TorchSave(file, Value(std::move(state))).ok());

  absl::StatusOr<Inspection> in = Inspect(file);
  ASSERT_TRUE(in.ok()) << in.status();
  const std::string json = InspectionJson(*in);
  ASSERT_EQ(json.back(), '\n');
  nlohmann::json parsed = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(parsed.is_discarded()) << json;
  EXPECT_EQ(parsed["path"], file);
  EXPECT_EQ(parsed["format"], "single-file");
  EXPECT_TRUE(parsed["world_size"].is_null());
  ASSERT_EQ(parsed["tensors"].size(), 1u);
  EXPECT_EQ(parsed["tensors"][0]["key"], tensor_key);
  EXPECT_EQ(parsed["tensors"][0]["dtype"], "float32");
  EXPECT_EQ(parsed["tensors"][0]["shape"], nlohmann::json({2, 3}));
  EXPECT_EQ(parsed["tensors"][0]["bytes"], 24);
  ASSERT_EQ(parsed["objects"].size(), 2u);
  EXPECT_EQ(parsed["objects"][0]["key"], object_key);
  EXPECT_EQ(parsed["objects"][0]["type"], "str");
  EXPECT_EQ(parsed["objects"][1]["key"], "broken");
  const std::string broken_repr = parsed["objects"][1]["repr"];
  EXPECT_NE(broken_repr.find("\xef\xbf\xbd"), std::string::npos) << broken_repr;  // U+FFFD
  // The fields keep their documented order.
  EXPECT_LT(json.find("\"path\""), json.find("\"format\""));
  EXPECT_LT(json.find("\"format\""), json.find("\"tensors\""));
  EXPECT_LT(json.find("\"tensors\""), json.find("\"objects\""));
  // Non-ASCII stays UTF-8 in the output, not \u escapes.
  EXPECT_NE(json.find(object_key.substr(0, 6)), std::string::npos) << json;
  EXPECT_EQ(JsonString("\xe2\x82\xac\x7f"), "\"\xe2\x82\xac\x7f\"");
}

}  // namespace
}  // namespace fabric::tools
