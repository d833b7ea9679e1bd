// `fabric convert` end to end (the real binary, real Python torch and
// safetensors): torch.save files (ours, Python's), DCP folders and safetensors
// converted both ways bit-exact, sharded Hugging Face folders read through
// their index in plain JSON, --entry, --dtype, exit codes, inspect and verify
// of safetensors, and the memory bound of a streaming conversion.
//
// Args: FABRIC PYTHON CONVERT_INTEROP_PY
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/safetensors_index.h"
#include "checkpoint/safetensors_writer.h"
#include "tools/test_util.h"

namespace fabric {
namespace tools {
namespace {

namespace fs = std::filesystem;

std::string g_fabric, g_python, g_script;

ChildResult Fabric(std::vector<std::string> args) {
  args.insert(args.begin(), g_fabric);
  return RunChild(args);
}

ChildResult Py(std::vector<std::string> args) {
  args.insert(args.begin(), g_script);
  args.insert(args.begin(), g_python);
  return RunChild(args);
}

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_TRUE(absl::StrContains(haystack, needle)) << "'" << (haystack) << "' lacks '" << (needle) << "'"

#define EXPECT_RUNS(result, text)                                                \
  do {                                                                           \
    const ChildResult r_ = (result);                                             \
    EXPECT_EQ(r_.exit_code, 0) << r_.out << r_.err;                              \
    EXPECT_CONTAINS(r_.out, text);                                               \
  } while (false)

// Python's checkpoints, made once.
const std::string& PyDir() {
  static const std::string dir = [] {
    const std::string d = FreshTestPath("py");
    fs::create_directories(d);
    EXPECT_RUNS(Py({"make", d}), "made");
    return d;
  }();
  return dir;
}

long PeakKib(const std::string& err) {
  const size_t at = err.find("peak memory (VmHWM): ");
  long kib = -1;
  if (at != std::string::npos) {
    (void)absl::SimpleAtoi(err.substr(at + 21, err.find(' ', at + 21) - at - 21), &kib);
  }
  return kib;
}

TEST(Convert, TorchSaveFileToSafetensorsAndBack) {
  const std::string d = FreshTestPath("torch_file");
  fs::create_directories(d);
  const std::string state = PyDir() + "/state.pt";
  // The default entry, "model": every dtype, 0-dim, empty, a strided view.
  ChildResult r = Fabric({"convert", state, "--output_file", d + "/m.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "8 tensors in 1 file(s)");
  EXPECT_RUNS(Py({"file", d + "/m.safetensors", state, "model"}), "ok file");
  // A bare state dict is taken whole.
  r = Fabric({"convert", PyDir() + "/bare.pt", "--output_file", d + "/bare.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_RUNS(Py({"file", d + "/bare.safetensors", PyDir() + "/bare.pt", ""}), "ok file");
  // Another entry; its non-tensor keys are left out and named.
  r = Fabric({"convert", state, "--entry", "optimizer", "--output_file", d + "/o.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "left out 2 non-tensor key(s)");
  EXPECT_RUNS(Py({"file", d + "/o.safetensors", state, "optimizer"}), "ok file");
  r = Fabric({"convert", state, "--entry", "nope", "--output_file", d + "/x.safetensors"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "has no entry 'nope' (entries: model, optimizer, step)");
  // Cast for deployment: floating tensors to bf16, the rest as they are.
  r = Fabric({"convert", state, "--dtype", "bf16", "--output_file", d + "/bf16.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_RUNS(Py({"file", d + "/bf16.safetensors", state, "model", "bfloat16"}), "ok file");
  r = Fabric({"convert", state, "--dtype", "fp16", "--output_file", d + "/fp16.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_RUNS(Py({"file", d + "/fp16.safetensors", state, "model", "float16"}), "ok file");
}

TEST(Convert, SafetensorsToTorchSave) {
  const std::string d = FreshTestPath("to_torch");
  fs::create_directories(d);
  const std::string hf = PyDir() + "/hf.safetensors";
  ChildResult r = Fabric({"convert", hf, "--output_file", d + "/sd.pt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "(torch.save)");
  EXPECT_RUNS(Py({"pt", d + "/sd.pt", hf}), "ok pt");
  r = Fabric({"convert", hf, "--entry", "model", "--output_file", d + "/nested.pt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_RUNS(Py({"pt", d + "/nested.pt", hf, "model"}), "ok pt");
  // And safetensors -> safetensors keeps the source's metadata.
  r = Fabric({"convert", hf, "--output_file", d + "/again.safetensors"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto f = SafetensorsFile::Open(d + "/again.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->get()->header().metadata->at("source"), "py");
}

TEST(Convert, ShardedDcpFolderToHuggingFaceFolder) {
  const std::string ckpt = FreshTestPath("dcp");
  ASSERT_TRUE(WriteTestCheckpoint(ckpt, 2, true).ok());
  const std::string consolidated = ckpt + ".pt";
  ASSERT_EQ(Fabric({"consolidate", ckpt, "--output_file", consolidated}).exit_code, 0);
  const std::string out = FreshTestPath("hf_folder");
  ChildResult r = Fabric({"convert", ckpt, "--output_file", out, "--max_shard_size", "200B"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "(safetensors (sharded))");
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  ChildResult py = Py({"folder", out, consolidated, "model"});
  EXPECT_EQ(py.exit_code, 0) << py.out << py.err;
  EXPECT_CONTAINS(py.out, "ok folder");
  EXPECT_FALSE(absl::StrContains(py.out, "ok folder 1 shards"));
  // An existing export is not replaced without --force; with it, the old
  // shards not in the new export are gone.
  r = Fabric({"convert", ckpt, "--output_file", out, "--max_shard_size", "1GB"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "--force");
  r = Fabric({"convert", ckpt, "--output_file", out, "--max_shard_size", "1GB", "--force"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"model.safetensors"});
  // The folder reads back (one file now) as Python reads it.
  EXPECT_RUNS(Py({"file", out + "/model.safetensors", consolidated, "model"}), "ok file");
}

TEST(Convert, ExitCodesAndMessages) {
  const std::string d = FreshTestPath("codes");
  fs::create_directories(d);
  const std::string state = PyDir() + "/state.pt";
  ChildResult r = Fabric({"convert", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_CONTAINS(r.out, "usage: fabric convert");
  EXPECT_EQ(Fabric({"help", "convert"}).exit_code, 0);
  r = Fabric({"convert", state});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "--output_file DEST is required");
  r = Fabric({"convert", state, "--output_file", d + "/a.safetensors", "--dtype", "int4"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "'int4' is not one of bf16, fp16");
  r = Fabric({"convert", state, "--output_file", d + "/a", "--max_shard_size", "lots"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "'lots' is not a size");
  r = Fabric({"convert", d + "/missing.pt", "--output_file", d + "/a.safetensors"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "missing.pt");
  ASSERT_EQ(Fabric({"convert", state, "--output_file", d + "/a.safetensors"}).exit_code, 0);
  const auto before = fs::last_write_time(d + "/a.safetensors");
  r = Fabric({"convert", state, "--output_file", d + "/a.safetensors"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "already exists");
  EXPECT_EQ(fs::last_write_time(d + "/a.safetensors"), before);
  EXPECT_EQ(Fabric({"convert", state, "--output_file", d + "/a.safetensors", "--force"}).exit_code,
            0);
  // A corrupt safetensors source: exit 1, the file and the tensor named.
  std::string bytes;
  {
    std::ifstream in(d + "/a.safetensors", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::ofstream(d + "/cut.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() - 4);
  r = Fabric({"convert", d + "/cut.safetensors", "--output_file", d + "/cut.pt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "cut.safetensors");
  EXPECT_FALSE(fs::exists(d + "/cut.pt"));
}

TEST(Convert, InspectAndVerifySafetensors) {
  const std::string d = FreshTestPath("inspect");
  fs::create_directories(d);
  const std::string hf = PyDir() + "/hf.safetensors";
  ChildResult r = Fabric({"inspect", hf});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "format:     safetensors");
  EXPECT_CONTAINS(r.out, "layer.bias  bfloat16  [17]  34 B");
  EXPECT_CONTAINS(r.out, "__metadata__.source");
  r = Fabric({"inspect", hf, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "\"format\":\"safetensors\"");
  EXPECT_CONTAINS(r.out, "\"key\":\"mask\",\"source\":\"safetensors\",\"dtype\":\"bool\"");
  EXPECT_RUNS(Fabric({"verify", hf}), "OK: ");
  // A folder.
  const std::string folder = d + "/hf";
  ASSERT_EQ(Fabric({"convert", hf, "--output_file", folder, "--max_shard_size", "300B"}).exit_code,
            0);
  r = Fabric({"inspect", folder});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "format:     safetensors (sharded)");
  EXPECT_CONTAINS(r.out, "model.safetensors.index.json");
  EXPECT_RUNS(Fabric({"verify", folder}), "safetensors (sharded)");
  // A BOOL byte that is not 0 or 1, and a shard gone missing.
  std::string bytes;
  {
    std::ifstream in(hf, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto f = SafetensorsFile::Open(hf);
  ASSERT_TRUE(f.ok());
  const SafetensorsTensorInfo* mask = (*f)->Find("mask");
  bytes[(*f)->data_offset() + mask->begin + 1] = 7;
  std::ofstream(d + "/bool.safetensors", std::ios::binary) << bytes;
  r = Fabric({"verify", d + "/bool.safetensors"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "bool.safetensors': tensor 'mask' (BOOL): byte 1 is 7");
  fs::remove(folder + "/" + SafetensorsShardName(2, 3));
  r = Fabric({"verify", folder});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, SafetensorsShardName(2, 3));
  EXPECT_CONTAINS(r.err, "is missing");
}

// A 512 MiB model entry (16 tensors of 64 MiB, DCP on 2 ranks) through the
// converter in both directions: the peak resident memory above the binary's
// baseline (inspecting the same folder) stays far below the data, as slabs,
// not tensors or the model, are in memory.
TEST(Convert, MemoryStaysBounded) {
  const std::string ckpt = FreshTestPath("big");
  absl::StatusOr<uint64_t> bytes = WriteLargeCheckpoint(ckpt, 2, 16, uint64_t{64} << 20);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ChildResult base = Fabric({"inspect", ckpt, "--report_memory"});
  ASSERT_EQ(base.exit_code, 0) << base.err;
  const long base_kib = PeakKib(base.err);
  ASSERT_GT(base_kib, 0) << base.err;
  const std::string folder = FreshTestPath("big_hf");
  ChildResult r = Fabric({"convert", ckpt, "--output_file", folder, "--max_shard_size", "300MB",
                          "--report_memory"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "8 tensors in 2 file(s), 512.00 MiB");
  const long peak_out = PeakKib(r.err);
  const std::string pt = FreshTestPath("big.pt");
  r = Fabric({"convert", folder, "--output_file", pt, "--report_memory"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const long peak_back = PeakKib(r.err);
  std::printf("model entry 512 MiB: peak RSS DCP -> safetensors folder %ld KiB, folder -> "
              "torch.save %ld KiB (baseline %ld KiB)\n", peak_out, peak_back, base_kib);
  EXPECT_LT(peak_out - base_kib, 192 << 10);
  EXPECT_LT(peak_back - base_kib, 192 << 10);
  EXPECT_EQ(Fabric({"verify", folder}).exit_code, 0);
  fs::remove_all(ckpt);
  fs::remove_all(folder);
  fs::remove(pt);
}

}  // namespace
}  // namespace tools
}  // namespace fabric

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 3) {
    fabric::tools::g_fabric = argv[1];
    fabric::tools::g_python = argv[2];
    fabric::tools::g_script = argv[3];
  }
  return RUN_ALL_TESTS();
}
