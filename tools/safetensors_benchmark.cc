// safetensors figures (docs/benchmarks.md), each beside its reference
// measured in the same run:
//  1. load of a ~2 GiB .safetensors file into a module's existing tensors
//     (LoadSafetensorsModule: pread straight into the parameters), page cache
//     dropped, against Python's safetensors.torch.load_file (same file, cold)
//     and a raw cold sequential read of the file;
//  2. export of a sharded (DCP) checkpoint whose model entry is ~2 GiB to a
//     Hugging Face folder (`fabric convert --max_shard_size`), against the
//     Python way (torch DCP load, then save_file per shard) and a raw O_DIRECT
//     write of as many bytes: wall time and each process's peak memory.
//
//   bazel run //tools:safetensors_benchmark -- [--gib=2] [--dir=/tmp/fabric_st_bench]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/disk_reference.h"
#include "checkpoint/safetensors_module.h"
#include "tools/test_util.h"

ABSL_FLAG(double, gib, 2.0, "bytes of the file loaded and of the model entry exported, GiB");
ABSL_FLAG(int, rounds, 3, "rounds of the three cold reads of the load figure (median kept)");
ABSL_FLAG(std::string, dir, "/tmp/fabric_st_bench", "scratch folder (removed at the end)");
ABSL_FLAG(std::string, fabric, "", "the fabric binary");
ABSL_FLAG(std::string, python, "", "the venv Python");
ABSL_FLAG(std::string, script, "", "tools/testdata/safetensors_benchmark.py");

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

void Settle() {
  sync();
  sleep(3);
}

double JsonNumber(const std::string& text, const std::string& key) {
  const size_t at = text.find("\"" + key + "\": ");
  return at == std::string::npos ? -1 : std::atof(text.c_str() + at + key.size() + 4);
}

long PeakKib(const std::string& err) {
  const size_t at = err.find("peak memory (VmHWM): ");
  return at == std::string::npos ? -1 : std::atol(err.c_str() + at + 21);
}

long SelfPeakKib() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  while (f != nullptr && std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
  }
  if (f != nullptr) std::fclose(f);
  return kib;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Cold sequential read of `path`, 16 MiB at a time: GB/s.
double RawReadGBs(const std::string& path) {
  DropPageCache(path);
  std::vector<char> buf(size_t{16} << 20);
  const int fd = open(path.c_str(), O_RDONLY);
  const auto t0 = Clock::now();
  uint64_t total = 0;
  ssize_t n;
  while ((n = read(fd, buf.data(), buf.size())) > 0) total += static_cast<uint64_t>(n);
  close(fd);
  return total / Seconds(t0) / 1e9;
}

int Main() {
  const std::string dir = absl::GetFlag(FLAGS_dir);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const uint64_t bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_gib) * (1ull << 30));
  const std::string py = absl::GetFlag(FLAGS_python), script = absl::GetFlag(FLAGS_script);

  // 1. Load into existing tensors. A transformer-like mix: 16 big matrices
  // (90%) and 64 small vectors (norms, biases).
  auto module = std::make_shared<torch::nn::Module>();
  const int64_t big = static_cast<int64_t>(bytes * 9 / 10 / 16 / 4);
  const int64_t small = static_cast<int64_t>(bytes / 10 / 64 / 4);
  for (int i = 0; i < 16; ++i) module->register_parameter(absl::StrCat("w", i), at::randn({big}));
  for (int i = 0; i < 64; ++i) module->register_parameter(absl::StrCat("b", i), at::randn({small}));
  const std::string file = dir + "/model.safetensors";
  auto t0 = Clock::now();
  if (absl::Status s = SaveSafetensorsModule(file, *module); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  const double save_s = Seconds(t0);
  const uint64_t file_bytes = fs::file_size(file);
  // The disk's speed drifts within minutes here, so the three reads take turns
  // over several rounds (a different one first each round) and each row is
  // the median of its rounds.
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  std::vector<double> ours_v, py_v, pyinto_v, raw_v;
  double py_peak = -1, pyinto_peak = -1;
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < 4; ++k) {
      const int which = (r + k) % 4;
      Settle();
      if (which == 0) {
        for (const auto& p : module->parameters()) p.detach().zero_();
        DropPageCache(file);
        t0 = Clock::now();
        absl::StatusOr<StateLoadReport> loaded = LoadSafetensorsModule(file, *module, true);
        ours_v.push_back(Seconds(t0));
        if (!loaded.ok()) {
          std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
          return 1;
        }
      } else if (which == 1 || which == 2) {
        ChildResult pyload = RunChild({py, script, which == 1 ? "load" : "load_into", file});
        if (pyload.exit_code != 0) {
          std::fprintf(stderr, "Python load failed: %s\n", pyload.err.c_str());
          return 1;
        }
        (which == 1 ? py_v : pyinto_v).push_back(JsonNumber(pyload.out, "seconds"));
        double& peak = which == 1 ? py_peak : pyinto_peak;
        peak = std::max(peak, JsonNumber(pyload.out, "peak_mib"));
      } else {
        raw_v.push_back(file_bytes / RawReadGBs(file) / 1e9);
      }
    }
    std::printf("  round %d: ours %.2f s, Python load_file %.2f s, into tensors %.2f s, "
                "raw read %.2f s\n",
                r + 1, ours_v.back(), py_v.back(), pyinto_v.back(), raw_v.back());
  }
  const double ours_s = Median(ours_v), py_s = Median(py_v), pyinto_s = Median(pyinto_v),
               raw_s = Median(raw_v);
  std::printf("\n1. load %.2f GiB (%d tensors) cold cache into existing tensors "
              "(median of %d rounds)\n",
              file_bytes / double(1ull << 30), 80, rounds);
  std::printf("%-44s %8s %10s\n", "", "seconds", "GB/s");
  std::printf("%-44s %8.2f %10.2f\n", "ours: LoadSafetensorsModule (pread into params)", ours_s,
              file_bytes / ours_s / 1e9);
  std::printf("%-44s %8.2f %10.2f   (peak %.0f MiB)\n", "Python load_file (new tensors)", py_s,
              file_bytes / py_s / 1e9, py_peak);
  std::printf("%-44s %8.2f %10.2f   (peak %.0f MiB)\n", "Python load_file + copy_ into tensors",
              pyinto_s, file_bytes / pyinto_s / 1e9, pyinto_peak);
  std::printf("%-44s %8.2f %10.2f\n", "raw cold sequential read of the file", raw_s,
              file_bytes / raw_s / 1e9);
  std::printf("(our save of the file: %.2f s, %.2f GB/s)\n", save_s, file_bytes / save_s / 1e9);
  fs::remove(file);
  module.reset();

  // 2. Export of a sharded checkpoint (the model entry is half of it).
  const std::string ckpt = dir + "/dcp";
  absl::StatusOr<uint64_t> written = WriteLargeCheckpoint(ckpt, 2, 16, bytes / 8);
  if (!written.ok()) {
    std::fprintf(stderr, "%s\n", written.status().ToString().c_str());
    return 1;
  }
  const uint64_t model_bytes = *written / 2;
  Settle();
  DropPageCache(ckpt);
  ChildResult ours = RunChild({absl::GetFlag(FLAGS_fabric), "convert", ckpt, "--output_file",
                               dir + "/hf_ours", "--max_shard_size", "500MB", "--report_memory"});
  Settle();
  DropPageCache(ckpt);
  ChildResult pyexp = RunChild({py, script, "export", ckpt, dir + "/hf_py", "500000000"});
  Settle();
  const double raw_write = RawDirectWriteGBs(dir + "/raw", model_bytes);
  std::printf("\n2. export %.2f GiB model entry of a %.2f GiB 2-rank DCP checkpoint to a "
              "Hugging Face folder (500MB shards), cold cache\n",
              model_bytes / double(1ull << 30), *written / double(1ull << 30));
  std::printf("%-44s %8s %10s %12s\n", "", "seconds", "GB/s", "peak MiB");
  std::printf("%-44s %8.2f %10.2f %12.0f%s\n", "ours: fabric convert --max_shard_size",
              ours.seconds, model_bytes / ours.seconds / 1e9, PeakKib(ours.err) / 1024.0,
              ours.exit_code == 0 ? "" : absl::StrCat(" FAILED: ", ours.err).c_str());
  const double pys = JsonNumber(pyexp.out, "seconds");
  std::printf("%-44s %8.2f %10.2f %12.0f%s\n", "Python: DCP load + save_file per shard", pys,
              model_bytes / pys / 1e9, JsonNumber(pyexp.out, "peak_mib"),
              pyexp.exit_code == 0 ? "" : absl::StrCat(" FAILED: ", pyexp.err).c_str());
  std::printf("%-44s %8.2f %10.2f\n", "raw O_DIRECT write of as many bytes",
              model_bytes / raw_write / 1e9, raw_write);
  std::printf("(this process's peak: %ld KiB)\n", SelfPeakKib());
  fs::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace fabric::tools

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return fabric::tools::Main();
}
