#include "trainers/wikitext2.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fabric::trainers {
namespace {

namespace fs = std::filesystem;

// From argv (see BUILD.bazel): the venv Python, the reference script and the
// folder with the real WikiText-2 valid.txt/test.txt.
std::string g_python;
std::string g_script;
std::string g_data_dir;

fs::path TmpDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  fs::path dir = fs::path(tmp != nullptr ? tmp : "/tmp") / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void WriteFile(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The raw tensor files of testdata/tensor_files.py.
std::map<std::string, at::Tensor> ReadTensors(const fs::path& folder) {
  std::map<std::string, at::Tensor> out;
  std::ifstream manifest(folder / "manifest.txt");
  std::ifstream blob(folder / "tensors.bin", std::ios::binary);
  std::string line;
  while (std::getline(manifest, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 2 || f[0] == "#") continue;
    std::vector<int64_t> shape;
    for (size_t i = 2; i < f.size(); ++i) {
      int64_t d = 0;
      EXPECT_TRUE(absl::SimpleAtoi(f[i], &d)) << line;
      shape.push_back(d);
    }
    at::Tensor t = at::empty(shape, f[1] == "int64" ? at::kLong : at::kFloat);
    blob.read(static_cast<char*>(t.data_ptr()), t.numel() * t.element_size());
    out[f[0]] = t;
  }
  return out;
}

std::map<std::string, int64_t> ReadSummary(const fs::path& path) {
  std::map<std::string, int64_t> out;
  for (absl::string_view line : absl::StrSplit(ReadFile(path), '\n', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, ' ');
    int64_t v = 0;
    EXPECT_TRUE(absl::SimpleAtoi(kv.second, &v)) << line;
    out[kv.first] = v;
  }
  return out;
}

std::vector<int64_t> ToVector(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// A file exercising what Python's line iteration and str.split() do:
// \r\n and lone \r end lines; \v, \f, \x1c, U+0085, U+00A0, U+2028, U+3000
// split words without ending the line; a BOM is part of a word; blank and
// whitespace-only lines still give <eos>; the last line has no newline.
const char kTrickyText[] =
    "\xEF\xBB\xBFstart word\tword\r\n"
    "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\rlone cr\n"
    "\n"
    "   \t \n"
    "a\x0b"
    "b\x0c"
    "c\x1c"
    "d\xC2\x85"
    "e\xC2\xA0"
    "f\xE2\x80\xA8g\xE3\x80\x80h\xE2\x80\x8Bzero-width-is-not-space\n"
    "word caf\xC3\xA9 <eos> <unk> @-@ , . last line  ";

// Runs the Python reference once for the suite on the real valid split, the
// real test split and the tricky file.
class PythonReferenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(TmpDir("wikitext2_test"));
    WriteFile(*dir_ / "tricky.txt", kTrickyText);
    const std::string log = (*dir_ / "python.log").string();
    const std::string cmd =
        absl::StrCat("'", g_python, "' '", g_script, "' '", (*dir_ / "out").string(),
                     "' 'valid=", (fs::path(g_data_dir) / "valid.txt").string(),
                     ":35' 'test=", (fs::path(g_data_dir) / "test.txt").string(),
                     ":35' 'tricky=", (*dir_ / "tricky.txt").string(), ":3' > '", log, "' 2>&1");
    python_rc_ = std::system(cmd.c_str());
    python_log_ = new std::string(ReadFile(log));
  }

  void SetUp() override {
    ASSERT_EQ(python_rc_, 0) << "Python reference failed:\n" << *python_log_;
  }

  // Everything Python says about `name` equals what we compute from `file`.
  static void ExpectSameAsPython(const std::string& name, const fs::path& file,
                                 int64_t block_size) {
    SCOPED_TRACE(name);
    auto dataset = WikiText2::FromFile(file.string(), block_size);
    ASSERT_TRUE(dataset.ok()) << dataset.status();
    const fs::path out = *dir_ / "out" / name;
    const auto summary = ReadSummary(out / "summary.txt");
    EXPECT_EQ(dataset->vocab_size(), summary.at("vocab_size"));
    EXPECT_EQ(dataset->size(), summary.at("len"));
    EXPECT_EQ(dataset->data().numel(), summary.at("tokens"));

    std::vector<std::string> vocab = absl::StrSplit(ReadFile(out / "vocab.txt"), '\n');
    ASSERT_EQ(vocab.back(), "");
    vocab.pop_back();
    EXPECT_EQ(dataset->words(), vocab);

    const auto tensors = ReadTensors(out);
    EXPECT_TRUE(at::equal(dataset->data(), tensors.at("data")));
    int samples = 0;
    for (const auto& [key, value] : tensors) {
      std::vector<std::string> f = absl::StrSplit(key, '_');
      if (f[0] == "sample" && f[2] == "inputs") {
        int64_t i = 0;
        ASSERT_TRUE(absl::SimpleAtoi(f[1], &i));
        const LmSample s = dataset->Get(i);
        EXPECT_TRUE(at::equal(s.inputs, value)) << key;
        EXPECT_TRUE(at::equal(s.target, tensors.at(absl::StrCat("sample_", i, "_target"))));
        ++samples;
      } else if (f[0] == "sampler") {
        // sampler_<R>_<rank>_<shuffle>_<seed>_<drop_last>_<epoch>
        int64_t v[6];
        for (int k = 0; k < 6; ++k) ASSERT_TRUE(absl::SimpleAtoi(f[k + 1], &v[k])) << key;
        DistributedSamplerOptions o;
        o.num_replicas = v[0];
        o.rank = v[1];
        o.shuffle = v[2] != 0;
        o.seed = static_cast<uint64_t>(v[3]);
        o.drop_last = v[4] != 0;
        auto indices = DistributedSamplerIndices(dataset->size(), o, v[5]);
        ASSERT_TRUE(indices.ok()) << indices.status();
        EXPECT_EQ(*indices, ToVector(value)) << key;
        ++samples;
      }
    }
    EXPECT_GE(samples, 8);

    // DataLoader(batch_size=4, DistributedSampler(2, 1, seed=42)) at epoch 1.
    WikiText2LoaderOptions options;
    options.batch_size = 4;
    options.sampler.num_replicas = 2;
    options.sampler.rank = 1;
    options.sampler.seed = 42;
    auto loader =
        WikiText2Loader::Create(std::make_shared<const WikiText2>(*std::move(dataset)), options);
    ASSERT_TRUE(loader.ok()) << loader.status();
    EXPECT_EQ(loader->batches_per_epoch(), summary.at("loader_len"));
    ASSERT_TRUE(loader->Restore({1, 0, 42}).ok());
    for (int64_t k = 0; k < loader->batches_per_epoch(); ++k) {
      const LmBatch batch = loader->Next();
      EXPECT_EQ(batch.epoch, 1);
      EXPECT_EQ(batch.batch_index, k);
      auto it = tensors.find(absl::StrCat("loader_", k, "_inputs"));
      if (it == tensors.end()) continue;
      EXPECT_TRUE(at::equal(batch.inputs, it->second)) << "batch " << k;
      EXPECT_TRUE(at::equal(batch.target, tensors.at(absl::StrCat("loader_", k, "_target"))));
    }
    EXPECT_EQ(loader->position().epoch, 2);
  }

  static fs::path* dir_;
  static int python_rc_;
  static std::string* python_log_;
};

fs::path* PythonReferenceTest::dir_ = nullptr;
int PythonReferenceTest::python_rc_ = -1;
std::string* PythonReferenceTest::python_log_ = nullptr;

TEST_F(PythonReferenceTest, RealValidSplitEqualsPython) {
  ExpectSameAsPython("valid", fs::path(g_data_dir) / "valid.txt", 35);
}

TEST_F(PythonReferenceTest, RealTestSplitEqualsPython) {
  ExpectSameAsPython("test", fs::path(g_data_dir) / "test.txt", 35);
}

TEST_F(PythonReferenceTest, UnicodeWhitespaceAndNewlinesEqualPython) {
  ExpectSameAsPython("tricky", *dir_ / "tricky.txt", 3);
  auto dataset = WikiText2::FromFile((*dir_ / "tricky.txt").string(), 3);
  ASSERT_TRUE(dataset.ok());
  // Spot checks that do not depend on Python.
  EXPECT_EQ(dataset->words()[0], "\xEF\xBB\xBFstart");
  EXPECT_EQ(dataset->words()[2], "<eos>");
  EXPECT_EQ(dataset->words()[3], "caf\xC3\xA9");
  EXPECT_EQ(dataset->data().numel(), 31);
}

TEST(WikiText2Test, LoadsValidSplitFromDataDirWithDocumentedShape) {
  auto dataset = WikiText2::Load(g_data_dir, WikiText2Split::kValid);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->block_size(), 35);
  EXPECT_EQ(dataset->size(), dataset->data().numel() / 35 - 1);
  // README: 3,760 lines, 213,886 words; one <eos> per line.
  EXPECT_EQ(dataset->data().numel(), 213886 + 3760);
  const LmSample s = dataset->Get(dataset->size() - 1);
  EXPECT_EQ(s.inputs.numel(), 35);
  EXPECT_TRUE(at::equal(s.inputs.narrow(0, 1, 34), s.target.narrow(0, 0, 34)));
}

TEST(WikiText2Test, MissingTrainSplitNamesFlagAndFiles) {
  auto dataset = WikiText2::Load(g_data_dir, WikiText2Split::kTrain);
  ASSERT_FALSE(dataset.ok());
  const std::string message(dataset.status().message());
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(message.find("--data_dir"), std::string::npos) << message;
  EXPECT_NE(message.find("wikitext-2.txt"), std::string::npos) << message;
  EXPECT_NE(message.find("train.txt"), std::string::npos) << message;
  EXPECT_NE(message.find(g_data_dir), std::string::npos) << message;
  EXPECT_NE(message.find("valid.txt"), std::string::npos) << message;  // the hint

  auto missing = WikiText2::Load("/nonexistent/folder", WikiText2Split::kTest);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("test.txt"), std::string::npos);
  EXPECT_NE(missing.status().message().find("--data_dir"), std::string::npos);
}

TEST(WikiText2Test, TrainSplitUnderEitherName) {
  const fs::path dir = TmpDir("train_names");
  WriteFile(dir / "train.txt", "one two three\nfour five\n");
  auto a = WikiText2::Load(dir.string(), WikiText2Split::kTrain, 2);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->path(), (dir / "train.txt").string());
  // The demo's own name wins.
  WriteFile(dir / "wikitext-2.txt", "x y x y x y\n");
  auto b = WikiText2::Load(dir.string(), WikiText2Split::kTrain, 2);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->vocab_size(), 3);  // x, y, <eos>
  EXPECT_EQ(b->size(), 7 / 2 - 1);
}

TEST(WikiText2Test, BadFilesAreErrorsNamingTheFile) {
  const fs::path dir = TmpDir("bad_files");
  WriteFile(dir / "bad.txt", std::string("good words\nbad \xC3\x28 byte\n"));
  auto bad = WikiText2::FromFile((dir / "bad.txt").string());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bad.txt"), std::string::npos);
  EXPECT_NE(bad.status().message().find("UTF-8 at byte offset 15"), std::string::npos)
      << bad.status();

  WriteFile(dir / "surrogate.txt", std::string("a \xED\xA0\x80 b\n"));
  EXPECT_FALSE(WikiText2::FromFile((dir / "surrogate.txt").string()).ok());

  WriteFile(dir / "short.txt", "too short\n");
  auto short_file = WikiText2::FromFile((dir / "short.txt").string());
  ASSERT_FALSE(short_file.ok());
  EXPECT_NE(short_file.status().message().find("short.txt"), std::string::npos);

  auto absent = WikiText2::FromFile((dir / "absent.txt").string());
  ASSERT_FALSE(absent.ok());
  EXPECT_NE(absent.status().message().find("absent.txt"), std::string::npos);

  EXPECT_FALSE(WikiText2::FromFile((dir / "short.txt").string(), 0).ok());
  EXPECT_FALSE(ParseWikiText2Split("training").ok());
  EXPECT_EQ(*ParseWikiText2Split("valid"), WikiText2Split::kValid);
}

std::shared_ptr<const WikiText2> ValidSplit() {
  static auto* dataset = new std::shared_ptr<const WikiText2>([] {
    auto d = WikiText2::Load(g_data_dir, WikiText2Split::kValid);
    EXPECT_TRUE(d.ok()) << d.status();
    return std::make_shared<const WikiText2>(*std::move(d));
  }());
  return *dataset;
}

TEST(WikiText2LoaderTest, DeterministicAndSeedDependent) {
  WikiText2LoaderOptions options;
  options.batch_size = 8;
  options.sampler.seed = 5;
  auto a = WikiText2Loader::Create(ValidSplit(), options);
  auto b = WikiText2Loader::Create(ValidSplit(), options);
  options.sampler.seed = 6;
  auto c = WikiText2Loader::Create(ValidSplit(), options);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const LmBatch x = a->Next(), y = b->Next(), z = c->Next();
  EXPECT_EQ(x.inputs.sizes(), (std::vector<int64_t>{8, 35}));
  EXPECT_TRUE(at::equal(x.inputs, y.inputs));
  EXPECT_TRUE(at::equal(x.target, y.target));
  EXPECT_FALSE(at::equal(x.inputs, z.inputs));
}

TEST(WikiText2LoaderTest, RestoreResumesExactlyAcrossEpochs) {
  WikiText2LoaderOptions options;
  options.batch_size = 64;
  options.sampler.num_replicas = 2;
  options.sampler.rank = 1;
  options.sampler.seed = 11;
  auto loader = WikiText2Loader::Create(ValidSplit(), options);
  ASSERT_TRUE(loader.ok());
  const int64_t per_epoch = loader->batches_per_epoch();
  // ceil(ceil(n / 2) / 64)
  EXPECT_EQ(per_epoch, ((ValidSplit()->size() + 1) / 2 + 63) / 64);
  for (int64_t i = 0; i < per_epoch - 3; ++i) loader->Next();
  const LoaderPosition saved = loader->position();
  EXPECT_EQ(saved.epoch, 0);
  EXPECT_EQ(saved.batch_index, per_epoch - 3);
  EXPECT_EQ(saved.seed, 11u);
  std::vector<LmBatch> expected;
  for (int i = 0; i < 6; ++i) expected.push_back(loader->Next());  // crosses into epoch 1
  EXPECT_EQ(expected.back().epoch, 1);
  EXPECT_EQ(expected[2].inputs.size(0), ((ValidSplit()->size() + 1) / 2) % 64);  // short last

  options.sampler.seed = 999;  // the position's seed wins
  auto resumed = WikiText2Loader::Create(ValidSplit(), options);
  ASSERT_TRUE(resumed.ok());
  ASSERT_TRUE(resumed->Restore(saved).ok());
  for (const LmBatch& want : expected) {
    const LmBatch got = resumed->Next();
    EXPECT_EQ(got.epoch, want.epoch);
    EXPECT_EQ(got.batch_index, want.batch_index);
    EXPECT_TRUE(at::equal(got.inputs, want.inputs));
    EXPECT_TRUE(at::equal(got.target, want.target));
  }
  EXPECT_FALSE(resumed->Restore({0, per_epoch, 11}).ok());
  EXPECT_FALSE(resumed->Restore({-1, 0, 11}).ok());
}

TEST(WikiText2LoaderTest, RanksShardAnEpochDisjointly) {
  const int64_t n = ValidSplit()->size();
  std::multiset<int64_t> seen;
  for (int64_t rank = 0; rank < 3; ++rank) {
    DistributedSamplerOptions o;
    o.num_replicas = 3;
    o.rank = rank;
    o.seed = 3;
    o.drop_last = true;
    auto indices = DistributedSamplerIndices(n, o, 2);
    ASSERT_TRUE(indices.ok());
    EXPECT_EQ(static_cast<int64_t>(indices->size()), n / 3);
    seen.insert(indices->begin(), indices->end());
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), n / 3 * 3);
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), seen.size());  // disjoint
  DistributedSamplerOptions bad;
  bad.num_replicas = 2;
  bad.rank = 2;
  EXPECT_FALSE(DistributedSamplerIndices(n, bad, 0).ok());
  WikiText2LoaderOptions too_big;
  too_big.batch_size = n + 1;
  too_big.drop_last = true;
  EXPECT_FALSE(WikiText2Loader::Create(ValidSplit(), too_big).ok());
}

}  // namespace
}  // namespace fabric::trainers

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s <python> <wikitext2_reference.py> <wikitext-2 dir>\n", argv[0]);
    return 2;
  }
  fabric::trainers::g_python = argv[1];
  fabric::trainers::g_script = argv[2];
  fabric::trainers::g_data_dir = argv[3];
  // Given a file of the data set (valid.txt through runfiles), use its folder.
  if (auto& d = fabric::trainers::g_data_dir; d.size() > 4 && d.substr(d.size() - 4) == ".txt") {
    d = d.substr(0, d.rfind('/'));
  }
  return RUN_ALL_TESTS();
}
