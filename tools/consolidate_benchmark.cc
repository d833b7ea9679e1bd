// Benchmark: `fabric consolidate` against Python's consolidations
// (Lightning's consolidate_checkpoint and torch's dcp_to_torch_save) of the
// same ~4 GiB sharded checkpoint, in one run: wall time and peak resident
// memory (each process's own VmHWM).
//
//   bazel run //tools:consolidate_benchmark -- [--size_gib=4] [--world_size=8]
//       [--dir=/tmp/fabric_consolidate_bench] [--compare] [--keep]
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/test_util.h"

ABSL_FLAG(double, size_gib, 4.0, "checkpoint size in GiB");
ABSL_FLAG(int, world_size, 8, "ranks the checkpoint is sharded over");
ABSL_FLAG(int, tensors, 16, "number of tensors (half model, half optimizer state)");
ABSL_FLAG(std::string, dir, "/tmp/fabric_consolidate_bench", "where to write the checkpoint");
ABSL_FLAG(std::string, fabric, "", "the fabric binary");
ABSL_FLAG(std::string, python, "", "the venv Python");
ABSL_FLAG(std::string, script, "", "tools/testdata/fabric_py.py");
ABSL_FLAG(bool, compare, true, "check in Python that our output equals Lightning's");
ABSL_FLAG(bool, keep, false, "keep the checkpoint and outputs");

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;

long Parse(const std::string& text, const std::string& tag) {
  const size_t at = text.find(tag);
  if (at == std::string::npos) return -1;
  return std::atol(text.c_str() + at + tag.size());
}

double ParseSeconds(const std::string& text) {
  const size_t at = text.find("elapsed: ");
  if (at == std::string::npos) return -1;
  return std::atof(text.c_str() + at + 9);
}

struct Row {
  std::string name;
  ChildResult r;
  double inner_seconds = -1;  // Python: without interpreter start and imports
  long peak_kib = -1;
};

void Print(const Row& row, uint64_t bytes) {
  const double s = row.inner_seconds > 0 ? row.inner_seconds : row.r.seconds;
  std::printf("%-36s %8.2f s %9.2f s %9.0f MiB/s %10.1f MiB  %s\n", row.name.c_str(),
              row.r.seconds, s, bytes / s / (1 << 20), row.peak_kib / 1024.0,
              row.r.exit_code == 0 ? "ok" : absl::StrCat("FAILED rc=", row.r.exit_code).c_str());
}

int Main() {
  const std::string dir = absl::GetFlag(FLAGS_dir);
  const std::string fabric = absl::GetFlag(FLAGS_fabric);
  const std::string python = absl::GetFlag(FLAGS_python);
  const std::string script = absl::GetFlag(FLAGS_script);
  const int n = absl::GetFlag(FLAGS_tensors);
  const uint64_t tensor_bytes =
      static_cast<uint64_t>(absl::GetFlag(FLAGS_size_gib) * (uint64_t{1} << 30) / n);
  std::error_code ec;
  fs::remove_all(dir, ec);
  std::printf("writing a %.2f GiB checkpoint: %d tensors of %.0f MiB over %d ranks in %s ...\n",
              absl::GetFlag(FLAGS_size_gib), n, tensor_bytes / 1048576.0,
              absl::GetFlag(FLAGS_world_size), dir.c_str());
  std::fflush(stdout);
  absl::StatusOr<uint64_t> bytes =
      WriteLargeCheckpoint(dir, absl::GetFlag(FLAGS_world_size), n, tensor_bytes);
  if (!bytes.ok()) {
    std::fprintf(stderr, "writing the checkpoint failed: %s\n", bytes.status().ToString().c_str());
    return 1;
  }
  const std::string ours = dir + ".fabric", lightning = dir + ".lightning",
                    torch_out = dir + ".dcp_to_torch_save";
  for (const std::string& p : {ours, lightning, torch_out}) fs::remove(p, ec);

  std::vector<Row> rows;
  const std::string tag = "peak memory (VmHWM): ";
  {
    Row row;
    row.name = "fabric consolidate (C++, streaming)";
    row.r = RunChild({fabric, "consolidate", dir, "--output_file", ours, "--report_memory",
                      "--progress=never"});
    row.peak_kib = Parse(row.r.err, tag);
    if (row.r.exit_code != 0) std::fprintf(stderr, "%s\n", row.r.err.c_str());
    rows.push_back(row);
  }
  {
    Row row;
    row.name = "lightning consolidate_checkpoint (py)";
    row.r = RunChild({python, script, "lightning", dir, lightning});
    row.peak_kib = Parse(row.r.out, tag);
    row.inner_seconds = ParseSeconds(row.r.out);
    if (row.r.exit_code != 0) std::fprintf(stderr, "%s\n", row.r.err.c_str());
    rows.push_back(row);
  }
  {
    Row row;
    row.name = "torch dcp_to_torch_save (py)";
    row.r = RunChild({python, script, "dcp_to_torch_save", dir, torch_out});
    row.peak_kib = Parse(row.r.out, tag);
    row.inner_seconds = ParseSeconds(row.r.out);
    if (row.r.exit_code != 0) std::fprintf(stderr, "%s\n", row.r.err.c_str());
    rows.push_back(row);
    fs::remove(torch_out, ec);
  }
  std::printf("\ncheckpoint: %.2f GiB of tensors, largest tensor %.0f MiB (page cache warm for all)\n",
              *bytes / 1073741824.0, tensor_bytes / 1048576.0);
  std::printf("%-36s %10s %11s %15s %14s\n", "", "wall", "work", "throughput", "peak RSS");
  for (const Row& row : rows) Print(row, *bytes);
  std::printf("(wall: the whole process; work: without Python's start-up and imports)\n");

  int rc = 0;
  for (const Row& row : rows) rc |= row.r.exit_code != 0;
  if (absl::GetFlag(FLAGS_compare) && rc == 0) {
    ChildResult c = RunChild({python, script, "compare", ours, lightning});
    std::printf("\nour output vs Lightning's: %s", c.out.c_str());
    rc |= c.exit_code != 0;
  }
  if (!absl::GetFlag(FLAGS_keep)) {
    fs::remove_all(dir, ec);
    fs::remove(ours, ec);
    fs::remove(lightning, ec);
  }
  return rc;
}

}  // namespace
}  // namespace fabric::tools

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return fabric::tools::Main();
}
