// Single-file checkpoint throughput: our TorchSave / TorchFile loads against
// Python's torch.save / torch.load on the same state and the disk's raw
// O_DIRECT write bandwidth, all measured in the same run.
//
//   bazel run //checkpoint:torch_save_benchmark -- [--gib=2] [--dir=/tmp] [--repeat=3]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/disk_reference.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"

namespace fabric {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

// Lets the disk finish what earlier steps wrote: on a virtual disk the host
// may still be flushing gigabytes of writes, which slows whatever reads come
// next. Each timed load starts after this, ours and Python's alike.
void Settle() {
  sync();
  sleep(3);
}

// Counts what it is given and drops it: the save's CPU side alone (pickling,
// CRC-32, copies) without the disk.
class NullSink : public ByteSink {
 public:
  absl::Status Write(const void* data, size_t n) override {
    // Touch the bytes as a staging copy would, one cache line per 4 KiB.
    const char* p = static_cast<const char*>(data);
    for (size_t i = 0; i < n; i += 4096) sum_ += p[i];
    pos_ += n;
    return absl::OkStatus();
  }
  uint64_t position() const override { return pos_; }

 private:
  uint64_t pos_ = 0;
  int sum_ = 0;
};

// About `gib` GiB: many small tensors (a transformer's norms and biases) and a
// few large ones (embeddings, big matrices).
Dict MakeState(double gib) {
  const int64_t total = static_cast<int64_t>(gib * (1ll << 30));
  Dict d;
  int64_t used = 0;
  int i = 0;
  for (; used < total / 4; ++i) {  // 25%: 4 KiB .. 1 MiB tensors
    const int64_t n = 1024 << (i % 9);
    d.Set(absl::StrCat("small.", i), at::randn({n}));
    used += n * 4;
  }
  for (int j = 0; used < total; ++j) {  // 75%: 256 MiB tensors
    const int64_t n = std::min<int64_t>(64 << 20, (total - used) / 4);
    d.Set(absl::StrCat("large.", j), at::randn({n}));
    used += n * 4;
  }
  return d;
}

double GB(uint64_t b) { return b / 1e9; }

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace
}  // namespace fabric

int main(int argc, char** argv) {
  using namespace fabric;
  double gib = 2.0;
  std::string dir = "/tmp";
  std::string python;
  std::string script;
  int repeat = 3;
  bool save_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--gib=", 0) == 0) gib = std::stod(a.substr(6));
    else if (a.rfind("--dir=", 0) == 0) dir = a.substr(6);
    else if (a.rfind("--python=", 0) == 0) python = a.substr(9);
    else if (a.rfind("--script=", 0) == 0) script = a.substr(9);
    else if (a.rfind("--repeat=", 0) == 0) repeat = std::stoi(a.substr(9));
    else if (a == "--save_only") save_only = true;
    else { std::fprintf(stderr, "unknown flag %s\n", a.c_str()); return 2; }
  }
  std::printf("building %.2f GiB of tensors...\n", gib);
  Dict state = MakeState(gib);
  const uint64_t bytes = StorageBytes(Value(state));
  std::printf("state: %zu tensors, %.3f GB\n", state.size(), GB(bytes));

  {
    NullSink sink;
    auto t0 = Clock::now();
    absl::Status s = TorchSaveToSink(sink, "archive", Value(state));
    std::printf("save CPU side without the disk (pickle + CRC-32 into a null sink): %.2f GB/s\n",
                s.ok() ? GB(bytes) / Seconds(t0) : 0.0);
  }
  const std::string ours = dir + "/fabric_bench_ours.pt";
  const std::string theirs = dir + "/fabric_bench_python.pt";

  // Each figure is the median of `repeat` runs, interleaved so that a slow
  // moment of the disk does not favour one side; the raw write is measured
  // right before and right after each save, and the save is compared with
  // their mean.
  std::vector<double> raws, ratios, saves, loads, intos, py_loads, py_saves;
  bool same = true;
  for (int rep = 0; rep < repeat; ++rep) {
    const double raw_before = RawDirectWriteGBs(dir + "/fabric_bench_raw.bin", bytes);
    auto t0 = Clock::now();
    absl::Status s = TorchSave(ours, Value(state));
    saves.push_back(Seconds(t0));
    const double raw_after = RawDirectWriteGBs(dir + "/fabric_bench_raw.bin", bytes);
    raws.push_back((raw_before + raw_after) / 2);
    ratios.push_back(GB(bytes) / saves.back() / raws.back());
    if (!s.ok()) { std::fprintf(stderr, "save failed: %s\n", std::string(s.message()).c_str()); return 1; }

    if (save_only) {
      std::printf("run %d: raw write %.2f GB/s, save %.2fs (%.0f%% of raw)\n", rep + 1,
                  raws.back(), saves.back(), 100 * ratios.back());
      continue;
    }
    Settle();
    DropPageCache(ours);
    t0 = Clock::now();
    {
      auto loaded = TorchLoad(ours);
      loads.push_back(Seconds(t0));
      if (!loaded.ok()) { std::fprintf(stderr, "load failed\n"); return 1; }
      if (rep == 0) same = *loaded == Value(state);
    }

    // Loading into existing tensors (what restoring a model does).
    Settle();
    DropPageCache(ours);
    t0 = Clock::now();
    auto file = TorchFile::Open(ours);
    if (!file.ok()) return 1;
    std::vector<TensorRead> reads;
    for (const auto& [k, v] : (*file)->root().as_dict()) {
      reads.push_back({v.as_tensor_ref(), state.Find(k.as_string())->as_tensor()});
    }
    if (!(*file)->ReadIntoMany(reads).ok()) return 1;
    intos.push_back(Seconds(t0));

    if (!python.empty()) {
      Settle();
      DropPageCache(ours);
      const std::string out = dir + "/fabric_bench_py.json";
      const std::string cmd = absl::StrCat(python, " ", script, " ", ours, " ", theirs, " > ", out);
      double py_load = 0, py_save = 0;
      if (std::system(cmd.c_str()) == 0) {
        FILE* f = std::fopen(out.c_str(), "r");
        if (f && std::fscanf(f, "{\"torch_load_s\": %lf, \"torch_save_s\": %lf}", &py_load, &py_save) == 2) {
          py_loads.push_back(py_load);
          py_saves.push_back(py_save);
        }
        if (f) std::fclose(f);
      }
    }
    std::printf("run %d: raw write %.2f GB/s, save %.2fs (%.0f%% of raw), load %.2fs, "
                "load-into %.2fs%s\n",
                rep + 1, raws.back(), saves.back(), 100 * ratios.back(), loads.back(), intos.back(),
                py_saves.empty() ? "" : absl::StrFormat(", python save %.2fs, load %.2fs",
                                                        py_saves.back(), py_loads.back()).c_str());
  }
  const double save_s = Median(saves), load_s = Median(loads), into_s = Median(intos);
  const double raw = Median(raws);
  const double py_save = Median(py_saves), py_load = Median(py_loads);
  std::printf("\n%-44s %10s %10s\n", "", "seconds", "GB/s");
  std::printf("%-44s %10s %10.3f\n", "raw O_DIRECT write (dd-style, random bytes)", "", raw);
  std::printf("%-44s %10.3f %10.3f   (%.0f%% of raw, median of per-run ratios)\n",
              "fabric TorchSave", save_s, GB(bytes) / save_s, 100 * Median(ratios));
  if (py_save > 0) {
    std::printf("%-44s %10.3f %10.3f   (ours %.2fx)\n", "python torch.save + fsync", py_save,
                GB(bytes) / py_save, py_save / save_s);
  }
  std::printf("%-44s %10.3f %10.3f\n", "fabric TorchLoad (cold cache)", load_s, GB(bytes) / load_s);
  std::printf("%-44s %10.3f %10.3f\n", "fabric load into tensors (cold)", into_s, GB(bytes) / into_s);
  if (py_load > 0) {
    std::printf("%-44s %10.3f %10.3f   (ours %.2fx)\n", "python torch.load (cold cache)", py_load,
                GB(bytes) / py_load, py_load / load_s);
  }
  std::printf("round trip bit-exact: %s\n", same ? "yes" : "NO");
  unlink(ours.c_str());
  unlink(theirs.c_str());
  return same ? 0 : 1;
}
