#include "trainers/transformer.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace fabric::trainers {
namespace {

// argv[1] and argv[2] (see BUILD.bazel): the venv Python and the reference script.
std::string g_python;
std::string g_script;

namespace fs = std::filesystem;
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The raw exchange format of testdata/tensor_files.py.
void WriteTensors(const fs::path& folder, const NamedTensors& tensors,
                  const std::vector<std::string>& meta_lines) {
  fs::create_directories(folder);
  std::ofstream manifest(folder / "manifest.txt");
  std::ofstream blob(folder / "tensors.bin", std::ios::binary);
  for (const auto& line : meta_lines) manifest << "# " << line << "\n";
  for (const auto& [name, tensor] : tensors) {
    at::Tensor t = tensor.detach().contiguous().cpu();
    const char* dtype = t.scalar_type() == at::kLong ? "int64" : "float32";
    if (t.scalar_type() != at::kLong) t = t.to(at::kFloat);
    manifest << name << " " << dtype;
    for (int64_t d : t.sizes()) manifest << " " << d;
    manifest << "\n";
    blob.write(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  }
}

NamedTensors ReadTensors(const fs::path& folder) {
  NamedTensors out;
  std::ifstream manifest(folder / "manifest.txt");
  std::ifstream blob(folder / "tensors.bin", std::ios::binary);
  EXPECT_TRUE(manifest.good() && blob.good()) << folder;
  std::string line;
  while (std::getline(manifest, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.empty() || f[0] == "#") continue;
    std::vector<int64_t> shape;
    for (size_t i = 2; i < f.size(); ++i) {
      int64_t d = 0;
      EXPECT_TRUE(absl::SimpleAtoi(f[i], &d)) << line;
      shape.push_back(d);
    }
    at::Tensor t = at::empty(shape, f[1] == "int64" ? at::kLong : at::kFloat);
    blob.read(static_cast<char*>(t.data_ptr()), t.numel() * t.element_size());
    EXPECT_TRUE(blob.good()) << "short tensors.bin at " << f[0];
    out.emplace_back(f[0], t);
  }
  return out;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

NamedTensors StateDict(const torch::nn::Module& m) {
  NamedTensors out;
  for (const auto& item : m.named_parameters()) out.emplace_back(item.key(), item.value());
  for (const auto& item : m.named_buffers()) out.emplace_back(item.key(), item.value());
  return out;
}

std::vector<std::string> KeysAndShapes(const NamedTensors& tensors) {
  std::vector<std::string> out;
  for (const auto& [name, t] : tensors) {
    out.push_back(absl::StrCat(name, " ", absl::StrJoin(t.sizes(), " ")));
  }
  return out;
}

TransformerConfig TestConfig() {
  TransformerConfig c = TransformerConfig::Tiny(/*vocab_size=*/97);
  c.dropout = 0.2;  // the forward comparisons run in eval mode
  return c;
}

// Runs the Python reference once for the whole suite (importing lightning
// takes seconds): C++ weights and inputs go in, Python's results come out.
class PythonDemoTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* tmp = std::getenv("TEST_TMPDIR");
    dir_ = new fs::path(fs::path(tmp != nullptr ? tmp : "/tmp") / "transformer_test");
    fs::remove_all(*dir_);
    at::manual_seed(1234);
    cpp_model_ = new std::shared_ptr<Transformer>(std::make_shared<Transformer>(TestConfig()));
    inputs_ = new at::Tensor(at::randint(0, 97, {3, 35}, at::kLong));
    target_ = new at::Tensor(at::randint(0, 97, {3, 35}, at::kLong));
    NamedTensors state = StateDict(**cpp_model_);
    state.emplace_back("__inputs__", *inputs_);
    state.emplace_back("__target__", *target_);
    const TransformerConfig c = TestConfig();
    WriteTensors(*dir_ / "cpp", state,
                 {absl::StrCat("config ", c.vocab_size, " ", c.ninp, " ", c.nhead, " ", c.nhid, " ",
                               c.nlayers, " ", c.dropout)});
    const std::string log = (*dir_ / "python.log").string();
    const std::string cmd =
        absl::StrCat("'", g_python, "' '", g_script, "' '", (*dir_ / "cpp").string(), "' '",
                     (*dir_ / "out").string(), "' > '", log, "' 2>&1");
    python_rc_ = std::system(cmd.c_str());
    python_log_ = new std::string(ReadFile(log));
  }

  void SetUp() override {
    ASSERT_EQ(python_rc_, 0) << "Python reference failed:\n" << *python_log_;
  }

  static fs::path* dir_;
  static std::shared_ptr<Transformer>* cpp_model_;
  static at::Tensor* inputs_;
  static at::Tensor* target_;
  static int python_rc_;
  static std::string* python_log_;
};

fs::path* PythonDemoTest::dir_ = nullptr;
std::shared_ptr<Transformer>* PythonDemoTest::cpp_model_ = nullptr;
at::Tensor* PythonDemoTest::inputs_ = nullptr;
at::Tensor* PythonDemoTest::target_ = nullptr;
int PythonDemoTest::python_rc_ = -1;
std::string* PythonDemoTest::python_log_ = nullptr;

TEST_F(PythonDemoTest, StateDictKeysOrderAndShapesEqualPython) {
  NamedTensors python = ReadTensors(*dir_ / "out" / "python");
  ASSERT_FALSE(python.empty());
  ASSERT_EQ(python.back().first, "__logp__");
  python.pop_back();
  EXPECT_EQ(KeysAndShapes(StateDict(**cpp_model_)), KeysAndShapes(python));
  EXPECT_EQ(python.front().first, "embedding.weight");
  EXPECT_EQ(python.back().first, "decoder.bias");
}

TEST_F(PythonDemoTest, CppWeightsInPythonGiveOurLogProbs) {
  Transformer& model = **cpp_model_;
  model.eval();
  at::NoGradGuard no_grad;
  const at::Tensor ours = model.forward(*inputs_, *target_);
  NamedTensors python = ReadTensors(*dir_ / "out" / "cpp_weights");
  ASSERT_EQ(python.size(), 1u);
  const at::Tensor& theirs = python[0].second;
  ASSERT_EQ(ours.sizes(), theirs.sizes());
  EXPECT_EQ(ours.sizes(), (std::vector<int64_t>{3 * 35, 97}));
  const double diff = (ours - theirs).abs().max().item<double>();
  std::printf("max |C++ - Python| log-prob, C++ weights: %g\n", diff);
  EXPECT_LE(diff, 1e-5);
  // Log-probabilities: each row sums to one in probability space.
  EXPECT_TRUE(at::allclose(ours.exp().sum(-1), at::ones({3 * 35}), 1e-5, 1e-5));
}

TEST_F(PythonDemoTest, PythonWeightsInCppGivePythonLogProbs) {
  NamedTensors python = ReadTensors(*dir_ / "out" / "python");
  at::Tensor expected = python.back().second;
  python.pop_back();
  Transformer model(TestConfig());
  auto params = model.named_parameters();
  ASSERT_EQ(params.size(), python.size());
  {
    at::NoGradGuard no_grad;
    for (const auto& [name, value] : python) {
      at::Tensor* p = params.find(name);
      ASSERT_NE(p, nullptr) << name;
      p->copy_(value);
    }
  }
  model.eval();
  at::NoGradGuard no_grad;
  const at::Tensor ours = model.forward(*inputs_, *target_);
  ASSERT_EQ(ours.sizes(), expected.sizes());
  const double diff = (ours - expected).abs().max().item<double>();
  std::printf("max |C++ - Python| log-prob, Python weights: %g\n", diff);
  EXPECT_LE(diff, 1e-5);
  // The weights differ from the C++ model's, so this is a second, independent check.
  EXPECT_FALSE(at::allclose(ours, (*cpp_model_)->forward(*inputs_, *target_)));
}

TEST_F(PythonDemoTest, PresetStructuresEqualPythonOnMetaDevice) {
  const std::string keys = ReadFile(*dir_ / "out" / "keys.txt");
  for (const char* preset : {"demo", "1b"}) {
    auto config = TransformerPreset(preset, 33278);
    ASSERT_TRUE(config.ok()) << config.status();
    Transformer model(*config, at::TensorOptions().device(at::kMeta));
    std::vector<std::string> expected;
    int64_t python_count = -1;
    for (absl::string_view line : absl::StrSplit(keys, '\n', absl::SkipEmpty())) {
      std::vector<std::string> f = absl::StrSplit(line, ' ');
      if (f[0] != preset) continue;
      if (f[1] == "__count__") {
        ASSERT_TRUE(absl::SimpleAtoi(f[2], &python_count));
        continue;
      }
      expected.push_back(absl::StrJoin(f.begin() + 1, f.end(), " "));
    }
    EXPECT_EQ(KeysAndShapes(StateDict(model)), expected) << preset;
    int64_t ours = 0;
    for (const auto& p : model.parameters()) {
      EXPECT_TRUE(p.is_meta());
      ours += p.numel();
    }
    EXPECT_EQ(ours, python_count) << preset;
    EXPECT_EQ(TransformerParameterCount(*config), python_count) << preset;
  }
}

TEST(TransformerTest, OneBillionPresetCount) {
  const TransformerConfig c = TransformerConfig::OneB();
  EXPECT_EQ(c.nlayers, 32);
  EXPECT_EQ(c.nhid, 4096);
  EXPECT_EQ(c.ninp, 1024);
  EXPECT_EQ(c.nhead, 64);
  EXPECT_EQ(TransformerParameterCount(c), 1008763390);
}

TEST(TransformerTest, ParameterCountMatchesBuiltModel) {
  const TransformerConfig c = TestConfig();
  Transformer model(c);
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  EXPECT_EQ(n, TransformerParameterCount(c));
}

TEST(TransformerTest, InitialisationFollowsPython) {
  at::manual_seed(7);
  Transformer model(TransformerConfig::Tiny(50));
  auto params = model.named_parameters();
  // LayerNorms start at one/zero, attention biases at zero.
  EXPECT_TRUE(params["transformer.decoder.layers.1.norm3.weight"].eq(1).all().item<bool>());
  EXPECT_TRUE(params["transformer.encoder.norm.bias"].eq(0).all().item<bool>());
  EXPECT_TRUE(
      params["transformer.encoder.layers.0.self_attn.in_proj_bias"].eq(0).all().item<bool>());
  EXPECT_TRUE(
      params["transformer.decoder.layers.0.multihead_attn.out_proj.bias"].eq(0).all().item<bool>());
  // Matrices inside nn.Transformer are xavier-uniform: bound sqrt(6 / (in + out)).
  const at::Tensor w = params["transformer.encoder.layers.0.linear1.weight"];  // [64, 32]
  EXPECT_LE(w.abs().max().item<double>(), std::sqrt(6.0 / 96.0));
  EXPECT_GT(w.abs().max().item<double>(), 0.8 * std::sqrt(6.0 / 96.0));
  // The decoder head keeps nn.Linear's init: bound 1/sqrt(in).
  EXPECT_LE(params["decoder.weight"].abs().max().item<double>(), 1.0 / std::sqrt(32.0));
  // Embedding ~ N(0, 1).
  EXPECT_NEAR(params["embedding.weight"].std().item<double>(), 1.0, 0.1);
  // ResetParameters redraws.
  const at::Tensor before = params["embedding.weight"].clone();
  model.ResetParameters();
  EXPECT_FALSE(at::equal(before, params["embedding.weight"]));
}

TEST(TransformerTest, DropoutOnlyInTrainingAndAllParametersGetGradients) {
  at::manual_seed(3);
  Transformer model(TransformerConfig::Tiny(40));
  const at::Tensor inputs = at::randint(0, 40, {2, 9}, at::kLong);
  const at::Tensor target = at::randint(0, 40, {2, 9}, at::kLong);
  model.train();
  const at::Tensor a = model.forward(inputs, target);
  const at::Tensor b = model.forward(inputs, target);
  EXPECT_FALSE(at::allclose(a, b));  // dropout 0.2 draws differ
  const at::Tensor loss = TransformerLoss(a, target);
  EXPECT_NEAR(loss.item<double>(), -a.gather(1, target.reshape({-1, 1})).mean().item<double>(),
              1e-6);
  loss.backward();
  for (const auto& p : model.named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
  model.eval();
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(model.forward(inputs, target), model.forward(inputs, target)));
}

TEST(TransformerTest, DecoderIsCausal) {
  // A change in target position j must not change outputs before j.
  at::manual_seed(5);
  Transformer model(TransformerConfig::Tiny(30));
  model.eval();
  at::NoGradGuard no_grad;
  const at::Tensor inputs = at::randint(0, 30, {1, 8}, at::kLong);
  at::Tensor target = at::randint(0, 30, {1, 8}, at::kLong);
  const at::Tensor a = model.forward(inputs, target);
  target.index_put_({0, 5}, (target.index({0, 5}) + 1) % 30);
  const at::Tensor b = model.forward(inputs, target);
  EXPECT_TRUE(at::equal(a.narrow(0, 0, 5), b.narrow(0, 0, 5)));
  EXPECT_FALSE(at::allclose(a.narrow(0, 5, 3), b.narrow(0, 5, 3)));
}

TEST(TransformerTest, PresetsAndValidation) {
  EXPECT_TRUE(TransformerPreset("tiny", 10).ok());
  auto demo = TransformerPreset("demo", 123);
  ASSERT_TRUE(demo.ok());
  EXPECT_EQ(demo->vocab_size, 123);
  EXPECT_EQ(demo->ninp, 200);
  EXPECT_EQ(demo->nhid, 200);
  EXPECT_EQ(demo->nhead, 2);
  EXPECT_EQ(demo->nlayers, 2);
  EXPECT_DOUBLE_EQ(demo->dropout, 0.2);
  auto bad = TransformerPreset("huge", 10);
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("huge"), std::string::npos);

  TransformerConfig c = TransformerConfig::Tiny(10);
  EXPECT_TRUE(ValidateTransformerConfig(c).ok());
  c.nhead = 3;
  EXPECT_NE(ValidateTransformerConfig(c).message().find("divisible"), std::string::npos);
  c = TransformerConfig::Tiny(10);
  c.dropout = 1.0;
  EXPECT_FALSE(ValidateTransformerConfig(c).ok());
  c = TransformerConfig::Tiny(0);
  EXPECT_FALSE(ValidateTransformerConfig(c).ok());
}

}  // namespace
}  // namespace fabric::trainers

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s <python> <transformer_reference.py>\n", argv[0]);
    return 2;
  }
  fabric::trainers::g_python = argv[1];
  fabric::trainers::g_script = argv[2];
  return RUN_ALL_TESTS();
}
