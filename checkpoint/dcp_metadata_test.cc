#include "checkpoint/dcp_metadata.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/pickle_writer.h"
#include "checkpoint/value.h"

namespace fabric::dcp {
namespace {

std::string g_python;  // argv[1]
std::string g_script;  // argv[2]: testdata/dcp_metadata_interop.py

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir ? dir : "/tmp", "/", name);
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs the Python helper; returns its exit code, with its output in *out.
int RunPython(const std::string& args, std::string* out) {
  const std::string log = TempPath("python.log");
  const std::string cmd =
      absl::StrCat(g_python, " ", g_script, " ", args, " > ", log, " 2>&1");
  const int rc = std::system(cmd.c_str());
  *out = ReadFile(log);
  return rc;
}

Metadata SampleMetadata() {
  Metadata md;
  TensorStorageMetadata w;
  w.properties.dtype = at::kFloat;
  w.size = {4, 6};
  w.chunks = {{{0, 0}, {4, 3}}, {{0, 3}, {4, 3}}};
  TensorStorageMetadata b;
  b.properties.dtype = at::kBFloat16;
  b.properties.requires_grad = true;
  b.properties.memory_format = MemoryFormat::kChannelsLast;
  b.size = {5};
  b.chunks = {{{0}, {5}}};
  TensorStorageMetadata step;  // 0-dim
  step.properties.dtype = at::kLong;
  step.chunks = {{{}, {}}};
  md.state_dict_metadata = {{"model.w", w},
                            {"model.b", b},
                            {"optimizer.state.0.step", step},
                            {"epoch", BytesStorageMetadata{}}};
  md.planner_data.emplace();
  md.planner_data->push_back({"model.w", {std::string("model"), std::string("w")}});
  md.planner_data->push_back({"model.b", {std::string("model"), std::string("b")}});
  md.planner_data->push_back({"optimizer.state.0.step",
                              {std::string("optimizer"), std::string("state"),
                               std::string("0"), std::string("step")}});
  md.planner_data->push_back({"epoch", {std::string("epoch")}});
  md.storage_data = {
      {{"epoch", std::nullopt, std::nullopt}, {"__0_0.distcp", 0, 1261, std::nullopt, std::nullopt}},
      {{"model.w", std::vector<int64_t>{0, 0}, 0}, {"__0_0.distcp", 1261, 1577, std::nullopt, std::nullopt}},
      {{"model.w", std::vector<int64_t>{0, 3}, 1}, {"__1_0.distcp", 0, 1577, std::nullopt, std::nullopt}},
      {{"model.b", std::vector<int64_t>{0}, 0},
       {"__0_0.distcp", 2838, 1500, std::vector<std::string>{"zstd"}, std::nullopt}},
      {{"optimizer.state.0.step", std::vector<int64_t>{}, 0},
       {"__0_0.distcp", 4338, 1400, std::nullopt, std::nullopt}},
  };
  StorageMeta meta;
  meta.checkpoint_id = "/tmp/some/ckpt";
  meta.save_id = "0c6a0b38-36c4-4a4b-a4c1-93bd6d2c3d8e";
  meta.modules = {"m1"};
  md.storage_meta = meta;
  md.version = kCurrentVersion;
  return md;
}

void ExpectSame(const Metadata& a, const Metadata& b) {
  EXPECT_TRUE(a.state_dict_metadata == b.state_dict_metadata);
  EXPECT_TRUE(a.planner_data == b.planner_data);
  ASSERT_EQ(a.storage_data.size(), b.storage_data.size());
  for (size_t i = 0; i < a.storage_data.size(); ++i) {
    EXPECT_TRUE(a.storage_data[i].first == b.storage_data[i].first) << a.storage_data[i].first.fqn;
    EXPECT_EQ(a.storage_data[i].first.index, b.storage_data[i].first.index);
    EXPECT_TRUE(a.storage_data[i].second == b.storage_data[i].second);
  }
  EXPECT_TRUE(a.storage_meta == b.storage_meta);
  EXPECT_EQ(a.version, b.version);
}

TEST(DcpMetadataTest, RoundTripInCpp) {
  const Metadata md = SampleMetadata();
  absl::StatusOr<std::string> bytes = SerializeMetadata(md);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<Metadata> back = ParseMetadata(*bytes, "mem");
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(md, *back);
}

TEST(DcpMetadataTest, ObjectShapesMatchPython) {
  absl::StatusOr<Value> v = ToValue(SampleMetadata());
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->is_object());
  EXPECT_EQ(v->as_object().callable.ToString(), "torch.distributed.checkpoint.metadata.Metadata");
  EXPECT_TRUE(v->as_object().newobj);
  const Dict& state = v->as_object().state->as_dict();
  ASSERT_EQ(state.size(), 5u);
  EXPECT_EQ(state.items()[0].first.as_string(), "state_dict_metadata");
  EXPECT_EQ(state.items()[4].first.as_string(), "version");
  // TensorProperties pickles its __getstate__ tuple.
  const Value& w = state.Find("state_dict_metadata")->as_dict().items()[0].second;
  const Value& props = *w.as_object().state->as_dict().Find("properties");
  ASSERT_TRUE(props.as_object().state->is_tuple());
  const auto& t = props.as_object().state->items();
  ASSERT_EQ(t.size(), 5u);
  EXPECT_EQ(t[0].as_global().ToString(), "torch.float32");
  EXPECT_EQ(t[1].as_object().callable.ToString(), "torch.serialization._get_layout");
  EXPECT_EQ(t[3].as_object().callable.name, "_MEM_FORMAT_ENCODING");
  // _StorageInfo leaves out transform_descriptors when there are none.
  const Dict& storage = state.Find("storage_data")->as_dict();
  const Value& info0 = storage.items()[0].second;
  EXPECT_EQ(info0.as_object().callable.ToString(),
            "torch.distributed.checkpoint.filesystem._StorageInfo");
  EXPECT_EQ(info0.as_object().state->as_dict().size(), 3u);
  EXPECT_EQ(storage.items()[3].second.as_object().state->as_dict().size(), 4u);
  // A bytes key's MetadataIndex has no offset field.
  EXPECT_EQ(storage.items()[0].first.as_object().state->as_dict().size(), 2u);
  EXPECT_EQ(storage.items()[1].first.as_object().state->as_dict().size(), 3u);
}

TEST(DcpMetadataTest, PythonLoadsOursAndWeReadItBack) {
  const Metadata md = SampleMetadata();
  absl::StatusOr<std::string> bytes = SerializeMetadata(md);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const std::string ours = TempPath("ours.metadata");
  const std::string theirs = TempPath("theirs.metadata");
  WriteFile(ours, *bytes);
  std::string out;
  ASSERT_EQ(RunPython(absl::StrCat("check ", ours, " ", theirs), &out), 0) << out;
  EXPECT_NE(out.find("OK 4 5"), std::string::npos) << out;
  absl::StatusOr<Metadata> back = ParseMetadata(ReadFile(theirs), theirs);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(md, *back);
}

TEST(DcpMetadataTest, ReadsMetadataMadeByPython) {
  const std::string path = TempPath("made.metadata");
  std::string out;
  ASSERT_EQ(RunPython(absl::StrCat("make ", path), &out), 0) << out;
  absl::StatusOr<Metadata> md = ParseMetadata(ReadFile(path), path);
  ASSERT_TRUE(md.ok()) << md.status();
  ASSERT_EQ(md->state_dict_metadata.size(), 4u);
  const auto* w = std::get_if<TensorStorageMetadata>(md->Find("model.w"));
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->properties.dtype, at::kFloat);
  EXPECT_EQ(w->properties.layout, "torch.strided");
  EXPECT_EQ(w->size, (std::vector<int64_t>{4, 6}));
  ASSERT_EQ(w->chunks.size(), 2u);
  EXPECT_EQ(w->chunks[1].offsets, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(w->chunks[1].sizes, (std::vector<int64_t>{4, 3}));
  const auto* b = std::get_if<TensorStorageMetadata>(md->Find("model.b"));
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->properties.dtype, at::kBFloat16);
  EXPECT_TRUE(b->properties.requires_grad);
  EXPECT_EQ(b->properties.memory_format, MemoryFormat::kChannelsLast);
  const auto* step = std::get_if<TensorStorageMetadata>(md->Find("optimizer.state.0.step"));
  ASSERT_NE(step, nullptr);
  EXPECT_TRUE(step->size.empty());
  ASSERT_EQ(step->chunks.size(), 1u);
  EXPECT_TRUE(step->chunks[0].offsets.empty());
  EXPECT_TRUE(std::holds_alternative<BytesStorageMetadata>(*md->Find("epoch")));

  ASSERT_EQ(md->storage_data.size(), 5u);
  const StorageInfo* wi = md->FindStorage({"model.w", std::vector<int64_t>{0, 3}, std::nullopt});
  ASSERT_NE(wi, nullptr);
  EXPECT_EQ(wi->relative_path, "__1_0.distcp");
  EXPECT_EQ(wi->length, 200);
  const StorageInfo* bi = md->FindStorage({"model.b", std::vector<int64_t>{0}, std::nullopt});
  ASSERT_NE(bi, nullptr);
  EXPECT_EQ(bi->transform_descriptors, (std::vector<std::string>{"zstd"}));
  const StorageInfo* ei = md->FindStorage({"epoch", std::nullopt, std::nullopt});
  ASSERT_NE(ei, nullptr);
  EXPECT_EQ(ei->offset, 0);
  EXPECT_EQ(md->storage_data[0].first.index, std::nullopt);
  EXPECT_EQ(md->storage_data[2].first.index, 1);

  ASSERT_TRUE(md->planner_data.has_value());
  EXPECT_EQ(FlattenedKey(md->planner_data->at(2).second), "optimizer.state.0.step");
  ASSERT_TRUE(md->storage_meta.has_value());
  EXPECT_EQ(md->storage_meta->checkpoint_id, "/tmp/some/ckpt");
  EXPECT_EQ(md->storage_meta->save_id, "abc");
  EXPECT_EQ(md->storage_meta->load_id, std::nullopt);
  EXPECT_EQ(md->storage_meta->modules, (std::vector<std::string>{"m1"}));
  EXPECT_EQ(md->version, "1.0.0");
}

TEST(DcpMetadataTest, BadInputIsAnErrorNotACrash) {
  EXPECT_FALSE(ParseMetadata("", "empty").ok());
  EXPECT_FALSE(ParseMetadata("not a pickle at all", "junk").ok());
  // A valid pickle of something else names the file and what it expected.
  Dict d;
  d.Set("state_dict_metadata", Value::MakeDict());
  absl::StatusOr<std::string> other = pickle::Pickle(Value(std::move(d)), 2);
  ASSERT_TRUE(other.ok());
  absl::Status s = ParseMetadata(*other, "dir/.metadata").status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("dir/.metadata"), std::string::npos) << s;
  EXPECT_NE(s.message().find("Metadata"), std::string::npos) << s;

  absl::StatusOr<std::string> bytes = SerializeMetadata(SampleMetadata());
  ASSERT_TRUE(bytes.ok());
  for (size_t n = 0; n < bytes->size(); ++n) {
    EXPECT_FALSE(ParseMetadata(bytes->substr(0, n), "truncated").ok()) << n;
  }
  std::mt19937 gen(42);
  for (int i = 0; i < 2000; ++i) {
    std::string bad = *bytes;
    for (int j = 0; j < 3; ++j) {
      bad[gen() % bad.size()] = static_cast<char>(gen() & 0xFF);
    }
    (void)ParseMetadata(bad, "flipped");  // must not crash
  }
}

TEST(DcpMetadataTest, WrongFieldTypesAreErrors) {
  Metadata md = SampleMetadata();
  absl::StatusOr<Value> v = ToValue(md);
  ASSERT_TRUE(v.ok());
  // A chunk whose sizes are a string.
  Value bad = v->Clone();
  Dict& sdm = bad.as_object().state->as_dict().Find("state_dict_metadata")->as_dict();
  Value& w = *sdm.Find("model.w");
  Value& chunk0 = w.as_object().state->as_dict().Find("chunks")->items()[0];
  chunk0.as_object().state->as_dict().Set("sizes", Value("oops"));
  absl::Status s = FromValue(bad, "x").status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.w"), std::string::npos) << s;
}

TEST(DcpMetadataTest, FlattenLikeDcp) {
  at::Tensor t = at::ones({2});
  Dict inner_state;
  inner_state.Set(Value(0), Value(Dict{{"exp_avg", t}, {"step", at::zeros({})}}));
  Dict group{{"lr", 0.1},
             {"betas", Value::Tuple({0.9, 0.999})},
             {"params", Value::List({Value(0)})}};
  Dict optimizer{{"state", Value(std::move(inner_state))},
                 {"param_groups", Value::List({Value(std::move(group))})}};
  Dict model{{"layer.0.weight", t}, {"empty", Value::MakeDict()}};
  Dict root{{"model", Value(std::move(model))},
            {"optimizer", Value(std::move(optimizer))},
            {"buffers", Value::List({t, t})},
            {"plain_list", Value::List({Value(1), Value(2)})},
            {"epoch", 3}};
  absl::StatusOr<std::vector<FlatEntry>> flat = FlattenStateDict(Value(root));
  ASSERT_TRUE(flat.ok()) << flat.status();
  std::vector<std::string> keys;
  for (const FlatEntry& e : *flat) keys.push_back(e.key);
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "model.layer.0.weight", "optimizer.state.0.exp_avg",
                      "optimizer.state.0.step", "optimizer.param_groups.0.lr",
                      "optimizer.param_groups.0.betas", "optimizer.param_groups.0.params",
                      "buffers.0", "buffers.1", "plain_list", "epoch"}));
  // Paths keep dict keys as strings (the int key 0 becomes "0") and list
  // positions as ints.
  EXPECT_EQ((*flat)[0].path, (ObjectPath{std::string("model"), std::string("layer.0.weight")}));
  EXPECT_EQ((*flat)[1].path, (ObjectPath{std::string("optimizer"), std::string("state"),
                                         std::string("0"), std::string("exp_avg")}));
  EXPECT_EQ((*flat)[3].path, (ObjectPath{std::string("optimizer"), std::string("param_groups"),
                                         int64_t{0}, std::string("lr")}));
  EXPECT_EQ((*flat)[6].path, (ObjectPath{std::string("buffers"), int64_t{0}}));

  absl::StatusOr<Value> back = UnflattenStateDict(*flat);
  ASSERT_TRUE(back.ok()) << back.status();
  const Dict& b = back->as_dict();
  EXPECT_TRUE(b.Find("model")->as_dict().Find("layer.0.weight")->is_tensor());
  EXPECT_EQ(b.Find("model")->as_dict().Find("empty"), nullptr);  // vanished, as in DCP
  const Value& groups = *b.Find("optimizer")->as_dict().Find("param_groups");
  ASSERT_TRUE(groups.is_list());
  EXPECT_EQ(groups.items()[0].as_dict().Find("lr")->as_float(), 0.1);
  EXPECT_TRUE(b.Find("optimizer")->as_dict().Find("state")->as_dict().Find("0") != nullptr);
  EXPECT_EQ(b.Find("buffers")->items().size(), 2u);
  EXPECT_EQ(b.Find("epoch")->as_int(), 3);

  // Duplicate flattened keys are an error, as in Python.
  Dict dup{{"a.b", 1}, {"a", Value(Dict{{"b", 2}})}};
  EXPECT_FALSE(FlattenStateDict(Value(std::move(dup))).ok());
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
