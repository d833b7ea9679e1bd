// The `fabric` command line: tools for fabric_cpp (and Lightning Fabric)
// checkpoints. See docs/cli.md.
//
//   fabric consolidate CHECKPOINT_FOLDER [--output_file PATH] [--force]
//   fabric convert SOURCE --output_file DEST [--max_shard_size SIZE] [--entry KEY]
//                  [--dtype bf16|fp16] [--force]
//   fabric inspect PATH [--json]
//   fabric verify PATH
//
// Exit codes: 0 success, 1 a bad checkpoint (or another failure), 2 bad
// usage (including an existing output without --force), 130 interrupted.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/consolidate.h"
#include "tools/convert.h"
#include "tools/inspect.h"
#include "tools/progress.h"
#include "tools/verify.h"

namespace fabric::tools {
namespace {

constexpr int kOk = 0;
constexpr int kBadCheckpoint = 1;
constexpr int kUsage = 2;
constexpr int kInterrupted = 130;

constexpr char kMainHelp[] =
    "usage: fabric <command> [args]\n"
    "\n"
    "Tools for fabric_cpp and Lightning Fabric checkpoints (torch.save files and\n"
    "PyTorch distributed checkpoint folders).\n"
    "\n"
    "commands:\n"
    "  consolidate  turn a sharded checkpoint folder into one torch.save file\n"
    "  convert      export a checkpoint to safetensors (Hugging Face), or back to torch.save\n"
    "  inspect      show what a checkpoint holds (keys, dtypes, shapes, chunks)\n"
    "  verify       read every byte of a checkpoint and check its consistency\n"
    "  help         show help for a command\n"
    "\n"
    "Run 'fabric <command> --help' for a command's options.\n"
    "Exit codes: 0 success, 1 bad checkpoint or failure, 2 bad usage, 130 interrupted.\n";

constexpr char kConsolidateHelp[] =
    "usage: fabric consolidate CHECKPOINT_FOLDER [--output_file PATH] [--force]\n"
    "                          [--progress=auto|always|never] [--report_memory]\n"
    "                          [--no_verify_checksums]\n"
    "\n"
    "Converts a sharded checkpoint (a PyTorch DCP folder, as saved by fabric_cpp's or\n"
    "Lightning's FSDP strategy or by torch.distributed.checkpoint) into a single file\n"
    "that torch.load() and fabric_cpp's load() read: the keys nested back as saved\n"
    "(model weights and optimizer state keyed by parameter name), with the entries of\n"
    "Lightning's meta.pt merged in. Tensors are reassembled and written one slab at a\n"
    "time, so memory stays small whatever the checkpoint's size.\n"
    "\n"
    "  CHECKPOINT_FOLDER   the folder with .metadata and __<rank>_0.distcp files\n"
    "  --output_file PATH  where to write (default: CHECKPOINT_FOLDER.consolidated,\n"
    "                      next to the folder)\n"
    "  --force             replace an existing output file (otherwise: exit 2)\n"
    "  --no_verify_checksums  do not check CRC-32s of what is read (default: every\n"
    "                      record and item is checked; a mismatch fails, exit 1)\n"
    "  --progress=WHEN     progress bar on stderr: auto (if a terminal), always, never\n"
    "  --report_memory     print the peak resident memory (VmHWM) to stderr at the end\n"
    "\n"
    "The output appears only when complete; an interrupted run leaves nothing under\n"
    "its name.\n";

constexpr char kConvertHelp[] =
    "usage: fabric convert SOURCE --output_file DEST [--max_shard_size SIZE]\n"
    "                      [--entry KEY] [--dtype bf16|fp16] [--force]\n"
    "                      [--progress=auto|always|never] [--report_memory]\n"
    "\n"
    "Exports the tensors of one entry of a checkpoint to safetensors, the weight format\n"
    "of the Hugging Face ecosystem, or turns safetensors back into a torch.save file.\n"
    "Tensors are streamed in slabs, so memory stays small whatever the model's size.\n"
    "\n"
    "  SOURCE               a torch.save file or sharded (DCP) folder (ours, Python's,\n"
    "                       Lightning's), a .safetensors file, or a Hugging Face folder\n"
    "                       with model.safetensors.index.json\n"
    "  --output_file DEST   DEST ending in .safetensors: one safetensors file;\n"
    "                       with --max_shard_size: a folder (see below);\n"
    "                       otherwise: a torch.save file (a bare state dict) for torch.load\n"
    "  --max_shard_size S   write DEST as a folder in Hugging Face's sharded layout,\n"
    "                       shards of at most S (5GB, 500MB, 2GiB, bytes), with\n"
    "                       model.safetensors.index.json (one shard: model.safetensors)\n"
    "  --entry KEY          the checkpoint entry to export (default: model; a file that\n"
    "                       is itself a state dict is exported whole; --entry= exports\n"
    "                       every tensor). With a safetensors SOURCE and a torch.save\n"
    "                       DEST: nest the tensors under KEY\n"
    "  --dtype bf16|fp16    cast floating-point tensors (F64, F32, F16, BF16) for deployment\n"
    "  --force              replace an existing output (otherwise: exit 2)\n"
    "  --progress=WHEN      progress bar on stderr: auto (if a terminal), always, never\n"
    "  --report_memory      print the peak resident memory (VmHWM) to stderr at the end\n"
    "\n"
    "Files appear only when complete; a sharded folder's index is written last.\n";

constexpr char kInspectHelp[] =
    "usage: fabric inspect PATH [--json] [--report_memory] [--no_verify_checksums]\n"
    "\n"
    "Shows a checkpoint's format, the world size it was saved with (sharded), its\n"
    "files, every tensor key with dtype, shape, bytes and (sharded) chunk layout, and\n"
    "the non-tensor entries. Tensor data is not read.\n"
    "\n"
    "  PATH             a single-file checkpoint, a sharded checkpoint folder, a\n"
    "                   .safetensors file or a Hugging Face safetensors folder\n"
    "  --json           print one JSON object instead of text\n"
    "  --no_verify_checksums  do not check CRC-32s of the records it reads\n"
    "  --report_memory  print the peak resident memory (VmHWM) to stderr at the end\n";

constexpr char kVerifyHelp[] =
    "usage: fabric verify PATH [--progress=auto|always|never] [--report_memory]\n"
    "\n"
    "Reads every byte of a checkpoint and checks that it is consistent: .metadata\n"
    "parses, chunks cover each tensor exactly once, every referenced byte range exists,\n"
    "every archive and record is well formed and matches the metadata, every zip\n"
    "CRC-32 matches. Stops at the first problem with exit code 1.\n"
    "\n"
    "  PATH             a single-file checkpoint, a sharded checkpoint folder, a\n"
    "                   .safetensors file or a Hugging Face safetensors folder\n"
    "                   (safetensors: every header and index check, every byte read,\n"
    "                   BOOL bytes 0 or 1)\n"
    "  --progress=WHEN  progress bar on stderr: auto (if a terminal), always, never\n"
    "  --report_memory  print the peak resident memory (VmHWM) to stderr at the end\n";

std::atomic<bool> g_cancel{false};
bool g_report_memory = false;

// VmHWM from /proc/self/status: this process's peak resident memory, KiB.
long PeakRssKib() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long kib = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib;
}

extern "C" void OnSignal(int sig) {
  g_cancel.store(true);
  std::signal(sig, SIG_DFL);  // a second signal ends the process at once
}

// Parsed arguments: positionals and --flags (value "" for bare flags).
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;
  bool help = false;
};

int Usage(const std::string& command, const std::string& msg) {
  std::fprintf(stderr, "fabric %s: %s\nRun 'fabric %s --help' for usage.\n", command.c_str(),
               msg.c_str(), command.c_str());
  return kUsage;
}

// `valued`: flags that take a value ("--f=v" or "--f v"); `bare`: switches.
std::optional<Args> Parse(const std::string& command, const std::vector<std::string>& argv,
                          const std::vector<std::string>& valued,
                          const std::vector<std::string>& bare, int* rc) {
  Args args;
  auto in = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  bool only_positional = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (only_positional || a.size() < 2 || a[0] != '-') {
      args.positional.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positional = true;
      continue;
    }
    if (a == "-h" || a == "--help" || a == "-help") {
      args.help = true;
      continue;
    }
    std::string name = a.substr(a[1] == '-' ? 2 : 1);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (in(valued, name)) {
      if (!value) {
        if (i + 1 >= argv.size()) {
          *rc = Usage(command, absl::StrCat("flag --", name, " needs a value"));
          return std::nullopt;
        }
        value = argv[++i];
      }
      args.flags[name] = *value;
    } else if (in(bare, name)) {
      if (value) {
        *rc = Usage(command, absl::StrCat("flag --", name, " takes no value"));
        return std::nullopt;
      }
      args.flags[name] = "";
      if (name == "report_memory") g_report_memory = true;
    } else {
      *rc = Usage(command, absl::StrCat("unknown flag '", a, "'"));
      return std::nullopt;
    }
  }
  return args;
}

// --progress: whether to draw the bar.
std::optional<bool> ProgressFlag(const Args& args, const std::string& command, int* rc) {
  auto it = args.flags.find("progress");
  const std::string v = it == args.flags.end() ? "auto" : it->second;
  if (v == "auto") return ProgressBar::StderrIsTerminal();
  if (v == "always") return true;
  if (v == "never") return false;
  *rc = Usage(command, absl::StrCat("--progress must be auto, always or never, not '", v, "'"));
  return std::nullopt;
}

int Fail(const std::string& command, const absl::Status& s) {
  std::fprintf(stderr, "fabric %s: error: %s\n", command.c_str(), std::string(s.message()).c_str());
  return kBadCheckpoint;
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Runs a long command's work (`run(options)`) with a progress bar, Ctrl-C and
// SIGTERM asking it to stop (options.cancel) rather than killing it mid-write.
template <typename Options, typename Run>
auto RunWithProgress(const std::string& command, bool show, Options& options, Run run) {
  ProgressBar bar(command, show);
  options.progress = [&bar](uint64_t done, uint64_t total) { bar.Update(done, total); };
  options.cancel = &g_cancel;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto result = run(options);
  bar.Finish();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  options.progress = nullptr;  // the bar is gone
  return result;
}

// The exit code of a long command that failed: interrupted, an output that
// exists without --force (a usage error), or a bad checkpoint.
int LongCommandFailed(const std::string& command, const absl::Status& s) {
  if (absl::IsCancelled(s)) {
    std::fprintf(stderr, "fabric %s: interrupted; no output was written\n", command.c_str());
    return kInterrupted;
  }
  if (absl::IsAlreadyExists(s)) {
    std::fprintf(stderr, "fabric %s: error: %s\n", command.c_str(),
                 std::string(s.message()).c_str());
    return kUsage;
  }
  return Fail(command, s);
}

int Consolidate(const std::vector<std::string>& argv) {
  const std::string cmd = "consolidate";
  int rc = kOk;
  std::optional<Args> args = Parse(cmd, argv, {"output_file", "progress"},
                                     {"force", "report_memory", "no_verify_checksums"}, &rc);
  if (!args) return rc;
  if (args->help) {
    std::fputs(kConsolidateHelp, stdout);
    return kOk;
  }
  if (args->positional.size() != 1) {
    return Usage(cmd, args->positional.empty() ? "missing CHECKPOINT_FOLDER"
                                               : "expected one CHECKPOINT_FOLDER");
  }
  std::optional<bool> progress = ProgressFlag(*args, cmd, &rc);
  if (!progress) return rc;
  ConsolidateOptions options;
  if (auto it = args->flags.find("output_file"); it != args->flags.end()) {
    if (it->second.empty()) return Usage(cmd, "--output_file is empty");
    options.output_file = it->second;
  }
  options.force = args->flags.count("force") > 0;
  options.verify_checksums = args->flags.count("no_verify_checksums") == 0;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<ConsolidateStats> stats = RunWithProgress(
      cmd, *progress, options, [&](const auto& o) { return tools::Consolidate(args->positional[0], o); });
  if (!stats.ok()) return LongCommandFailed(cmd, stats.status());
  const double s = Seconds(start);
  std::printf("wrote %s: %lld keys, %lld tensors, %s in %.2f s (%s/s)%s\n",
              stats->output_file.c_str(), static_cast<long long>(stats->keys),
              static_cast<long long>(stats->storages), HumanBytes(stats->tensor_bytes).c_str(), s,
              HumanBytes(s > 0 ? stats->tensor_bytes / s : 0).c_str(),
              stats->merged_meta ? ", meta.pt merged" : "");
  return kOk;
}

int Convert(const std::vector<std::string>& argv) {
  const std::string cmd = "convert";
  int rc = kOk;
  std::optional<Args> args =
      Parse(cmd, argv, {"output_file", "max_shard_size", "entry", "dtype", "progress"},
            {"force", "report_memory"}, &rc);
  if (!args) return rc;
  if (args->help) {
    std::fputs(kConvertHelp, stdout);
    return kOk;
  }
  if (args->positional.size() != 1) {
    return Usage(cmd, args->positional.empty() ? "missing SOURCE" : "expected one SOURCE");
  }
  std::optional<bool> progress = ProgressFlag(*args, cmd, &rc);
  if (!progress) return rc;
  ConvertOptions options;
  auto flag = [&](const char* name) -> const std::string* {
    auto it = args->flags.find(name);
    return it == args->flags.end() ? nullptr : &it->second;
  };
  if (const std::string* v = flag("output_file"); v == nullptr || v->empty()) {
    return Usage(cmd, "--output_file DEST is required");
  } else {
    options.output_file = *v;
  }
  if (const std::string* v = flag("max_shard_size")) {
    absl::StatusOr<uint64_t> n = ParseShardSize(*v);
    if (!n.ok()) return Usage(cmd, std::string(n.status().message()));
    options.max_shard_size = *n;
  }
  if (const std::string* v = flag("entry")) {
    options.entry = *v;
    options.entry_given = true;
  }
  if (const std::string* v = flag("dtype")) {
    absl::StatusOr<at::ScalarType> d = ParseCastDtype(*v);
    if (!d.ok()) return Usage(cmd, std::string(d.status().message()));
    options.dtype = *d;
  }
  options.force = flag("force") != nullptr;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<ConvertStats> stats = RunWithProgress(
      cmd, *progress, options, [&](const auto& o) { return tools::Convert(args->positional[0], o); });
  if (!stats.ok()) return LongCommandFailed(cmd, stats.status());
  const double s = Seconds(start);
  std::printf("wrote %s (%s): %lld tensors in %lld file(s), %s in %.2f s (%s/s)\n",
              stats->output.c_str(), stats->format.c_str(),
              static_cast<long long>(stats->tensors), static_cast<long long>(stats->files),
              HumanBytes(stats->bytes).c_str(), s,
              HumanBytes(s > 0 ? stats->bytes / s : 0).c_str());
  if (!stats->skipped.empty()) {
    std::printf("left out %zu non-tensor key(s) (safetensors holds tensors only): %s%s\n",
                stats->skipped.size(), stats->skipped[0].c_str(),
                stats->skipped.size() > 1 ? ", ..." : "");
  }
  return kOk;
}

int Inspect(const std::vector<std::string>& argv) {
  const std::string cmd = "inspect";
  int rc = kOk;
  std::optional<Args> args = Parse(cmd, argv, {}, {"json", "report_memory", "no_verify_checksums"}, &rc);
  if (!args) return rc;
  if (args->help) {
    std::fputs(kInspectHelp, stdout);
    return kOk;
  }
  if (args->positional.size() != 1) {
    return Usage(cmd, args->positional.empty() ? "missing PATH" : "expected one PATH");
  }
  LoadOptions load;
  load.verify_checksums = args->flags.count("no_verify_checksums") == 0;
  absl::StatusOr<Inspection> in = tools::Inspect(args->positional[0], load);
  if (!in.ok()) return Fail(cmd, in.status());
  const std::string text = args->flags.count("json") ? InspectionJson(*in) : InspectionText(*in);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return kOk;
}

int Verify(const std::vector<std::string>& argv) {
  const std::string cmd = "verify";
  int rc = kOk;
  std::optional<Args> args = Parse(cmd, argv, {"progress"}, {"report_memory"}, &rc);
  if (!args) return rc;
  if (args->help) {
    std::fputs(kVerifyHelp, stdout);
    return kOk;
  }
  if (args->positional.size() != 1) {
    return Usage(cmd, args->positional.empty() ? "missing PATH" : "expected one PATH");
  }
  std::optional<bool> progress = ProgressFlag(*args, cmd, &rc);
  if (!progress) return rc;
  ProgressBar bar("verify", *progress);
  VerifyOptions options;
  options.progress = [&bar](uint64_t done, uint64_t total) { bar.Update(done, total); };
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<VerifyReport> report = tools::Verify(args->positional[0], options);
  bar.Finish();
  if (!report.ok()) return Fail(cmd, report.status());
  std::printf("OK: %s (%s: %lld keys, %lld archives, %lld records, %s checked in %.2f s)\n",
              args->positional[0].c_str(), report->format.c_str(),
              static_cast<long long>(report->keys), static_cast<long long>(report->archives),
              static_cast<long long>(report->records), HumanBytes(report->bytes).c_str(),
              Seconds(start));
  return kOk;
}

int Main(int argc, char** argv) {
  std::vector<std::string> rest(argv + std::min(argc, 2), argv + argc);
  const std::string command = argc >= 2 ? argv[1] : "";
  if (command.empty()) {
    std::fputs(kMainHelp, stderr);
    return kUsage;
  }
  if (command == "-h" || command == "--help" || command == "help") {
    if (command == "help" && !rest.empty()) {
      const std::string& c = rest[0];
      if (c == "consolidate") return std::fputs(kConsolidateHelp, stdout), kOk;
      if (c == "convert") return std::fputs(kConvertHelp, stdout), kOk;
      if (c == "inspect") return std::fputs(kInspectHelp, stdout), kOk;
      if (c == "verify") return std::fputs(kVerifyHelp, stdout), kOk;
      std::fprintf(stderr, "fabric: unknown command '%s'\n", c.c_str());
      return kUsage;
    }
    std::fputs(kMainHelp, stdout);
    return kOk;
  }
  int rc = -1;
  if (command == "consolidate") rc = Consolidate(rest);
  if (command == "convert") rc = Convert(rest);
  if (command == "inspect") rc = Inspect(rest);
  if (command == "verify") rc = Verify(rest);
  if (rc >= 0) {
    if (g_report_memory) std::fprintf(stderr, "peak memory (VmHWM): %ld KiB\n", PeakRssKib());
    return rc;
  }
  std::fprintf(stderr, "fabric: unknown command '%s'\n\n%s", command.c_str(), kMainHelp);
  return kUsage;
}

}  // namespace
}  // namespace fabric::tools

int main(int argc, char** argv) { return fabric::tools::Main(argc, argv); }
