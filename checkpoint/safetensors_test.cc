// safetensors reader and writer: interop both ways with Python's safetensors
// package (bit-exact, every dtype, 0-dim, empty, __metadata__, a sharded
// folder), loads into modules (strict lists every key problem), and every
// kind of bad file refused with a message naming the file and the tensor.
//
// Args: PYTHON SAFETENSORS_INTEROP_PY
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/module_state.h"
#include "checkpoint/safetensors_header.h"
#include "checkpoint/safetensors_index.h"
#include "checkpoint/safetensors_module.h"
#include "checkpoint/safetensors_reader.h"
#include "checkpoint/safetensors_writer.h"
#include "checkpoint/test_python.h"
#include "checkpoint/value.h"

namespace fabric {
namespace {

namespace fs = std::filesystem;

std::string g_python, g_script;

std::string Dir(const std::string& name) {
  const fs::path d = fs::path(testing::TmpDir()) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::string RunPy(const std::string& mode, const std::string& dir) {
  std::ifstream in(g_script);
  std::stringstream script;
  script << in.rdbuf();
  std::string out;
  const int rc = testing::RunPythonScript(g_python, script.str(), {mode, dir}, &out);
  EXPECT_EQ(rc, 0) << out;
  return out;
}

bool SameBits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return x.nbytes() == y.nbytes() &&
         (x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The raw-bytes reference the Python side writes (manifest.txt: name, dtype
// name, dims; <i>.bin: the C-order bytes): it needs no format of its own.
std::map<std::string, at::Tensor> Expected(const std::string& dir) {
  std::map<std::string, at::Tensor> out;
  std::ifstream manifest(dir + "/manifest.txt");
  std::string line;
  for (int i = 0; std::getline(manifest, line); ++i) {
    std::vector<std::string> f;
    std::stringstream ls(line);
    for (std::string part; std::getline(ls, part, '\t');) f.push_back(part);
    absl::StatusOr<at::ScalarType> dtype = SafetensorsDtypeFromName(f.at(1));
    EXPECT_TRUE(dtype.ok()) << line;
    std::vector<int64_t> shape;
    for (size_t j = 2; j < f.size(); ++j) shape.push_back(std::stoll(f[j]));
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(*dtype));
    const std::string bytes = ReadAll(absl::StrCat(dir, "/", i, ".bin"));
    EXPECT_EQ(bytes.size(), t.nbytes()) << f[0];
    if (bytes.size() == t.nbytes() && !bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    out[f[0]] = t;
  }
  return out;
}

// Writes `tensors` as that reference.
void WriteExpected(const std::string& dir, const std::map<std::string, at::Tensor>& tensors) {
  fs::create_directories(dir);
  std::ofstream manifest(dir + "/manifest.txt");
  int i = 0;
  for (const auto& [name, t] : tensors) {
    manifest << name << '\t' << *SafetensorsDtypeName(t.scalar_type());
    for (int64_t d : t.sizes()) manifest << '\t' << d;
    manifest << '\n';
    const at::Tensor c = t.contiguous();
    std::ofstream(absl::StrCat(dir, "/", i++, ".bin"), std::ios::binary)
        .write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
  }
}

// Writes a file of `json` (padded as writers do unless `exact`) and `data`.
std::string Craft(const std::string& name, std::string json, const std::string& data,
                  int64_t length_override = -1) {
  const std::string path = (fs::path(testing::TmpDir()) / name).string();
  json.resize((json.size() + 7) / 8 * 8, ' ');
  uint64_t n = length_override >= 0 ? static_cast<uint64_t>(length_override) : json.size();
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  std::ofstream(path, std::ios::binary) << bytes << json << data;
  return path;
}

absl::Status OpenError(const std::string& path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  return f.ok() ? absl::OkStatus() : f.status();
}

#define EXPECT_ERROR_MENTIONS(status, ...)                                   \
  do {                                                                       \
    const absl::Status s_ = (status);                                        \
    EXPECT_FALSE(s_.ok());                                                   \
    for (const std::string& part : std::vector<std::string>{__VA_ARGS__}) {  \
      EXPECT_NE(std::string(s_.message()).find(part), std::string::npos)     \
          << "'" << part << "' not in: " << s_.message();                    \
    }                                                                        \
  } while (false)

TEST(Safetensors, PythonFilesLoadBitExact) {
  const std::string d = Dir("from_python");
  RunPy("write", d);
  const auto expected = Expected(d + "/expected");
  ASSERT_EQ(expected.size(), 20u);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(d + "/py.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_TRUE((*f)->header().metadata.has_value());
  EXPECT_EQ(*(*f)->header().metadata,
            (std::map<std::string, std::string>{{"format", "pt"},
                                                {"note", "caf\xc3\xa9 \"quoted\""}}));
  ASSERT_EQ((*f)->tensors().size(), expected.size());
  for (const auto& [name, e] : expected) {
    const SafetensorsTensorInfo* t = (*f)->Find(name);
    ASSERT_NE(t, nullptr) << name;
    absl::StatusOr<at::Tensor> mapped = (*f)->MapTensor(*t);
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    EXPECT_TRUE(SameBits(*mapped, e)) << name;
    at::Tensor read = at::empty(e.sizes(), e.options());
    ASSERT_TRUE((*f)->ReadInto(*t, read).ok()) << name;
    EXPECT_TRUE(SameBits(read, e)) << name;
  }
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> plain =
      SafetensorsFile::Open(d + "/py_nometa.safetensors");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE((*plain)->header().metadata.has_value());

  // The sharded folder, through its index, as one set of tensors.
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c =
      SafetensorsCheckpoint::Open(d + "/sharded");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->sharded());
  EXPECT_EQ((*c)->files().size(), 2u);
  ASSERT_EQ((*c)->tensors().size(), expected.size());
  TensorSource source = (*c)->Source();
  const Dict state_dict = (*c)->StateDict();  // outlives the refs found in it
  for (const auto& [name, e] : expected) {
    const Value* ref = state_dict.Find(name);
    ASSERT_NE(ref, nullptr) << name;
    at::Tensor dst = at::empty(e.sizes(), e.options());
    const absl::Status read = source(ref->as_tensor_ref(), dst);
    ASSERT_TRUE(read.ok()) << name << ": " << read;
    EXPECT_TRUE(SameBits(dst, e)) << name;
  }
}

TEST(Safetensors, OursLoadInPythonBitExactAndByteIdentical) {
  const std::string d = Dir("to_python");
  const std::string src = Dir("to_python_src");
  RunPy("write", src);
  const auto expected = Expected(src + "/expected");
  ASSERT_EQ(expected.size(), 20u);
  std::vector<std::pair<std::string, at::Tensor>> tensors(expected.begin(), expected.end());
  const std::map<std::string, std::string> meta{{"format", "pt"}};
  ASSERT_TRUE(SaveSafetensors(d + "/ours.safetensors", tensors, meta).ok());
  WriteExpected(d + "/expected", expected);
  std::ofstream(d + "/ours_expected_meta.json") << "{\"format\": \"pt\"}";
  const std::string out = RunPy("check", d);
  EXPECT_NE(out.find("ok: 20 tensors bit-exact"), std::string::npos) << out;
}

TEST(Safetensors, WriterLayoutMatchesPackageOrderAndAlignment) {
  SafetensorsHeader h;
  h.tensors = {{"z_bool", at::kBool, {3}}, {"a_f32", at::kFloat, {2}},
               {"b_i64", at::kLong, {1}}, {"c_f16", at::kHalf, {0}}};
  absl::StatusOr<std::string> prefix = LayOutSafetensors(h);
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_EQ(prefix->size() % 8, 0u);
  std::vector<std::string> order;
  for (const auto& t : h.tensors) order.push_back(t.name);
  EXPECT_EQ(order, (std::vector<std::string>{"b_i64", "a_f32", "c_f16", "z_bool"}));
  EXPECT_EQ(prefix->substr(8, 57),
            "{\"b_i64\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}");
  h.tensors.push_back({"a_f32", at::kFloat, {1}});
  EXPECT_ERROR_MENTIONS(LayOutSafetensors(h).status(), "a_f32", "twice");
}

TEST(Safetensors, StreamingWriterRefusesOutOfOrderAndIncompleteFiles) {
  const std::string d = Dir("writer");
  const std::string path = d + "/w.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> w = SafetensorsWriter::Create(
      path, {{"a", at::kFloat, {4}}, {"b", at::kFloat, {2}}}, std::nullopt);
  ASSERT_TRUE(w.ok()) << w.status();
  const float data[4] = {1, 2, 3, 4};
  EXPECT_ERROR_MENTIONS((*w)->BeginTensor("b"), "'b'", "out of order", "'a'");
  ASSERT_TRUE((*w)->BeginTensor("a").ok());
  ASSERT_TRUE((*w)->AppendTensor(data, 8).ok());
  EXPECT_ERROR_MENTIONS((*w)->EndTensor(), "'a'", "8 of its 16");
  ASSERT_TRUE((*w)->AppendTensor(data + 2, 8).ok());
  ASSERT_TRUE((*w)->EndTensor().ok());
  EXPECT_ERROR_MENTIONS((*w)->Commit(), "1 tensor(s) not written");
  w->reset();
  EXPECT_FALSE(fs::exists(path));  // nothing half-written appears
}

TEST(Safetensors, ReadsRowBlocks) {
  const std::string d = Dir("rows");
  at::Tensor t = at::arange(30, at::kFloat).reshape({10, 3});
  ASSERT_TRUE(SaveSafetensors(d + "/r.safetensors", {{"t", t}}).ok());
  auto f = SafetensorsFile::Open(d + "/r.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  at::Tensor rows = at::empty({4, 3}, at::kDouble);  // a cast on the way
  ASSERT_TRUE((*f)->ReadRowsInto(*(*f)->Find("t"), 6, 4, rows).ok());
  EXPECT_TRUE(rows.equal(t.slice(0, 6, 10).to(at::kDouble)));
  EXPECT_ERROR_MENTIONS((*f)->ReadRowsInto(*(*f)->Find("t"), 8, 4, rows), "'t'", "rows [8, 12)");
}

struct Net : torch::nn::Module {
  Net() {
    w = register_parameter("w", at::randn({4, 3}));
    b = register_parameter("b", at::randn({4}));
    steps = register_buffer("steps", at::tensor(int64_t{5}));
  }
  at::Tensor w, b, steps;
};

TEST(Safetensors, LoadsIntoModuleStrictListsEveryKey) {
  const std::string d = Dir("module");
  Net a;
  ASSERT_TRUE(SaveSafetensorsModule(d + "/a.safetensors", a).ok());
  Net b;
  absl::StatusOr<StateLoadReport> r = LoadSafetensorsModule(d + "/a.safetensors", b, true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(b.w.equal(a.w));
  EXPECT_TRUE(b.b.equal(a.b));
  EXPECT_TRUE(b.steps.equal(a.steps));

  // Missing "b" and "steps", unexpected "extra" and "other": all listed.
  ASSERT_TRUE(SaveSafetensors(d + "/odd.safetensors",
                              {{"w", a.w}, {"extra", a.b}, {"other", a.b}})
                  .ok());
  Net c;
  const at::Tensor before = c.w.clone();
  EXPECT_ERROR_MENTIONS(LoadSafetensorsModule(d + "/odd.safetensors", c, true).status(),
                        "odd.safetensors", "\"b\"", "\"steps\"", "\"extra\"", "\"other\"");
  EXPECT_TRUE(c.w.equal(before));  // nothing loaded on error
  r = LoadSafetensorsModule(d + "/odd.safetensors", c, false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->missing_keys, (std::vector<std::string>{"b", "steps"}));
  EXPECT_EQ(r->unexpected_keys.size(), 2u);
  EXPECT_TRUE(c.w.equal(a.w));

  // A bf16 file into fp32 parameters: cast like copy_; a wrong shape: refused.
  ASSERT_TRUE(SaveSafetensors(d + "/bf16.safetensors",
                              {{"w", a.w.to(at::kBFloat16)},
                               {"b", a.b.to(at::kBFloat16)},
                               {"steps", a.steps}})
                  .ok());
  ASSERT_TRUE(LoadSafetensorsModule(d + "/bf16.safetensors", c, true).ok());
  EXPECT_TRUE(c.w.equal(a.w.to(at::kBFloat16).to(at::kFloat)));
  ASSERT_TRUE(SaveSafetensors(d + "/shape.safetensors",
                              {{"w", a.w.t().contiguous()}, {"b", a.b}, {"steps", a.steps}})
                  .ok());
  EXPECT_ERROR_MENTIONS(LoadSafetensorsModule(d + "/shape.safetensors", c, false).status(),
                        "shape.safetensors", "w: shape [3,4] in file vs [4,3]");
}

const std::string kF32x2 = R"("dtype":"F32","shape":[2],"data_offsets":)";

TEST(Safetensors, BadFilesAreRefusedNamingFileAndTensor) {
  const std::string data16(16, '\x01');
  // Header length larger than the file.
  EXPECT_ERROR_MENTIONS(OpenError(Craft("len.safetensors", "{}", "", 4096)), "len.safetensors",
                        "header length 4096 is larger than the file");
  EXPECT_ERROR_MENTIONS(OpenError(Craft("huge.safetensors", "{}", "", 200'000'000)),
                        "huge.safetensors", "exceeds the format's limit");
  const std::string short_file = (fs::path(testing::TmpDir()) / "short.safetensors").string();
  std::ofstream(short_file, std::ios::binary) << "abc";
  EXPECT_ERROR_MENTIONS(OpenError(short_file), "short.safetensors", "too short");
  // Not JSON, or JSON that is not an object.
  EXPECT_ERROR_MENTIONS(OpenError(Craft("notjson.safetensors", "{\"a\":", "")),
                        "notjson.safetensors", "not valid JSON");
  EXPECT_ERROR_MENTIONS(OpenError(Craft("array.safetensors", "[1, 2]", "")), "array.safetensors",
                        "is a array, not an object");
  // Unknown dtype; a dtype LibTorch lacks.
  EXPECT_ERROR_MENTIONS(
      OpenError(Craft("dtype.safetensors",
                      R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", data16.substr(0, 8))),
      "dtype.safetensors", "tensor 'w'", "unknown dtype \"F33\"");
  EXPECT_ERROR_MENTIONS(
      OpenError(Craft("f4.safetensors",
                      R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", "x")),
      "f4.safetensors", "tensor 'w'", "F4");
  // Overlapping offsets.
  EXPECT_ERROR_MENTIONS(
      OpenError(Craft("overlap.safetensors",
                      "{\"a\":{" + kF32x2 + "[0,8]},\"b\":{" + kF32x2 + "[4,12]}}", data16.substr(0, 12))),
      "overlap.safetensors", "tensor 'b'", "overlap tensor 'a'");
  // Out of bounds.
  EXPECT_ERROR_MENTIONS(
      OpenError(Craft("oob.safetensors", "{\"a\":{" + kF32x2 + "[0,8]},\"b\":{" + kF32x2 +
                                             "[8,16]}}", data16.substr(0, 12))),
      "oob.safetensors", "tensor 'b'", "beyond the data section (12 bytes)");
  // A gap, and bytes no tensor covers.
  EXPECT_ERROR_MENTIONS(
      OpenError(Craft("gap.safetensors", "{\"a\":{" + kF32x2 + "[8,16]}}", data16)),
      "gap.safetensors", "tensor 'a'", "gap");
  EXPECT_ERROR_MENTIONS(OpenError(Craft("trailing.safetensors", "{\"a\":{" + kF32x2 + "[0,8]}}",
                                        data16)),
                        "trailing.safetensors", "cover 8 bytes", "holds 16");
  // Shape that does not match its byte range.
  EXPECT_ERROR_MENTIONS(
      OpenError(Craft("shape.safetensors",
                      R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data16.substr(0, 8))),
      "shape.safetensors", "tensor 'w'", "hold 8 bytes, but dtype F32 shape [3] needs 12");
  EXPECT_ERROR_MENTIONS(
      OpenError(Craft("neg.safetensors",
                      R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data16.substr(0, 8))),
      "neg.safetensors", "tensor 'w'", "non-negative integer");
  // Duplicate names; metadata values that are not strings.
  EXPECT_ERROR_MENTIONS(
      OpenError(Craft("dup.safetensors", "{\"a\":{" + kF32x2 + "[0,8]},\"a\":{" + kF32x2 + "[8,16]}}",
                      data16)),
      "dup.safetensors", "tensor 'a' appears twice");
  EXPECT_ERROR_MENTIONS(OpenError(Craft("meta.safetensors", R"({"__metadata__":{"n":3}})", "")),
                        "meta.safetensors", "__metadata__ entry 'n'");
  // A valid minimal file opens.
  EXPECT_TRUE(OpenError(Craft("ok.safetensors", "{\"a\":{" + kF32x2 + "[0,8]}}", data16.substr(0, 8)))
                  .ok());
}

TEST(Safetensors, BadIndexesAreRefusedNamingFileAndTensor) {
  const std::string d = Dir("bad_index");
  ASSERT_TRUE(SaveSafetensors(d + "/model-00001-of-00002.safetensors",
                              {{"a", at::ones({2})}, {"z", at::ones({1})}})
                  .ok());
  auto index = [&](const std::string& map) {
    std::ofstream(d + "/model.safetensors.index.json")
        << "{\"metadata\": {\"total_size\": 8}, \"weight_map\": " << map << "}";
    absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> c = SafetensorsCheckpoint::Open(d);
    return c.ok() ? absl::OkStatus() : c.status();
  };
  EXPECT_TRUE(index(R"({"a": "model-00001-of-00002.safetensors",
                        "z": "model-00001-of-00002.safetensors"})").ok());
  EXPECT_ERROR_MENTIONS(index(R"({"a": "model-00001-of-00002.safetensors",
                                  "z": "model-00001-of-00002.safetensors",
                                  "b": "model-00002-of-00002.safetensors"})"),
                        "model.safetensors.index.json", "shard 'model-00002-of-00002.safetensors'",
                        "tensor 'b'", "missing");
  EXPECT_ERROR_MENTIONS(index(R"({"a": "model-00001-of-00002.safetensors",
                                  "z": "model-00001-of-00002.safetensors",
                                  "c": "model-00001-of-00002.safetensors"})"),
                        "tensor 'c'", "does not hold it");
  EXPECT_ERROR_MENTIONS(index(R"({"a": "../outside.safetensors"})"), "tensor 'a'",
                        "not a file name in the folder");
  EXPECT_ERROR_MENTIONS(index(R"({"a": "model-00001-of-00002.safetensors"})"), "tensor 'z'",
                        "not in the weight map");
  EXPECT_ERROR_MENTIONS(index(R"([1])"), "weight_map");
}

}  // namespace
}  // namespace fabric

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 2) {
    fabric::g_python = argv[1];
    fabric::g_script = argv[2];
  }
  return RUN_ALL_TESTS();
}
