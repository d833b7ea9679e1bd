#include "tools/test_util.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_writer.h"
#include "checkpoint/torch_save.h"

extern char** environ;

namespace fabric::tools {

namespace fs = std::filesystem;

std::string FreshTestPath(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(tmp ? tmp : "/tmp", "/", name);
  std::error_code ec;
  fs::remove_all(path, ec);
  return path;
}

Value TestState() {
  at::manual_seed(3);
  Dict model;
  model.Set("layer.weight", at::randn({7, 5}));
  model.Set("layer.bias", at::arange(7, at::kFloat).mul(0.5).to(at::kBFloat16));
  model.Set("emb", at::randn({13, 4, 3}, at::kDouble));
  model.Set("cols", at::arange(24, at::kLong).reshape({4, 6}));
  model.Set("empty", at::zeros({0, 3}));
  Dict w_state;
  w_state.Set("exp_avg", at::randn({7, 5}));
  w_state.Set("step", at::full({}, 3.0, at::kFloat));
  Dict b_state;
  b_state.Set("exp_avg", at::randn({7}));
  b_state.Set("step", at::full({}, 3.0, at::kFloat));
  Dict state;
  state.Set("layer.weight", Value(std::move(w_state)));
  state.Set("layer.bias", Value(std::move(b_state)));
  Dict group;
  group.Set("lr", 0.1);
  group.Set("betas", Value::Tuple({0.9, 0.999}));
  group.Set("amsgrad", false);
  group.Set("foreach", Value());
  group.Set("params", Value::List({"layer.weight", "layer.bias"}));
  Dict optimizer;
  optimizer.Set("state", Value(std::move(state)));
  optimizer.Set("param_groups", Value::List({Value(std::move(group))}));
  Dict root;
  root.Set("model", Value(std::move(model)));
  root.Set("optimizer", Value(std::move(optimizer)));
  return Value(std::move(root));
}

Value TestMeta() {
  at::Tensor base = at::arange(10, at::kInt);
  Dict hparams;
  hparams.Set("name", "run-1");
  hparams.Set("layers", Value::List({1, 2, 3}));
  hparams.Set("scale", at::full({2, 2}, 1.5, at::kHalf));
  Dict meta;
  meta.Set("step", 11);
  meta.Set("hparams", Value(std::move(hparams)));
  meta.Set("views", Value::List({base.narrow(0, 0, 4), base.narrow(0, 4, 6)}));
  return Value(std::move(meta));
}

namespace {

// Row blocks of dim `dim` for `world` ranks (ranks past the rows get none).
std::vector<std::pair<int64_t, int64_t>> Blocks(int64_t n, int world) {
  std::vector<std::pair<int64_t, int64_t>> blocks;
  const int64_t per = (n + world - 1) / world;
  for (int r = 0; r < world; ++r) {
    const int64_t lo = std::min<int64_t>(n, r * per), hi = std::min<int64_t>(n, lo + per);
    blocks.emplace_back(lo, hi - lo);
  }
  return blocks;
}

absl::Status WriteRanks(const std::string& dir,
                        const std::vector<std::vector<dcp::WriteItem>>& items) {
  FABRIC_RETURN_IF_ERROR(dcp::PrepareCheckpointDir(dir));
  std::vector<std::vector<dcp::WriteResult>> results;
  for (size_t r = 0; r < items.size(); ++r) {
    FABRIC_ASSIGN_OR_RETURN(std::vector<dcp::WriteResult> res,
                            dcp::WriteRankFile(dir, static_cast<int>(r), items[r]));
    results.push_back(std::move(res));
  }
  FABRIC_ASSIGN_OR_RETURN(const dcp::Metadata md,
                          dcp::BuildMetadata(results, dcp::NewStorageMeta(dir)));
  return dcp::WriteMetadata(dir, md);
}

}  // namespace

absl::StatusOr<Value> WriteTestCheckpoint(const std::string& dir, int world_size,
                                          bool with_meta) {
  const Value state = TestState();
  FABRIC_ASSIGN_OR_RETURN(const std::vector<dcp::FlatEntry> flat, dcp::FlattenStateDict(state));
  std::vector<std::vector<dcp::WriteItem>> items(world_size);
  for (const dcp::FlatEntry& e : flat) {
    if (!e.value.is_tensor()) {
      dcp::WriteItem item = dcp::WriteItem::Object(e.key, e.value);
      item.path = e.path;
      items[0].push_back(std::move(item));
      continue;
    }
    const at::Tensor& t = e.value.as_tensor();
    if (t.dim() == 0 || t.numel() == 0) {
      dcp::WriteItem item = dcp::WriteItem::Tensor(e.key, t);
      item.path = e.path;
      items[0].push_back(std::move(item));
      continue;
    }
    // "cols" is split by columns (dim 1), everything else by rows.
    const int64_t dim = e.key == "model.cols" ? 1 : 0;
    const auto blocks = Blocks(t.size(dim), world_size);
    for (int r = 0; r < world_size; ++r) {
      if (blocks[r].second == 0) continue;
      std::vector<int64_t> offsets(t.dim(), 0);
      offsets[dim] = blocks[r].first;
      dcp::WriteItem item = dcp::WriteItem::Shard(
          e.key, t.narrow(dim, blocks[r].first, blocks[r].second).contiguous(), offsets,
          t.sizes().vec());
      item.path = e.path;
      items[r].push_back(std::move(item));
    }
  }
  FABRIC_RETURN_IF_ERROR(WriteRanks(dir, items));
  Value expected = state.Clone();
  if (with_meta) {
    const Value meta = TestMeta();
    FABRIC_RETURN_IF_ERROR(TorchSave((fs::path(dir) / "meta.pt").string(), meta));
    for (const auto& [k, v] : meta.as_dict()) expected.as_dict().Set(k, v);
  }
  return expected;
}

absl::StatusOr<uint64_t> WriteLargeCheckpoint(const std::string& dir, int world_size,
                                              int num_tensors, uint64_t tensor_bytes) {
  constexpr int64_t kCols = 1024;  // 4 KiB rows of float32
  const int64_t rows = static_cast<int64_t>(tensor_bytes / (kCols * 4));
  FABRIC_RETURN_IF_ERROR(dcp::PrepareCheckpointDir(dir));
  std::vector<std::vector<dcp::WriteResult>> results;
  const auto blocks = Blocks(rows, world_size);
  for (int r = 0; r < world_size; ++r) {
    std::vector<dcp::WriteItem> items;
    if (r == 0) {
      dcp::WriteItem step = dcp::WriteItem::Object("step", 1000);
      step.path = {std::string("step")};
      items.push_back(std::move(step));
    }
    for (int i = 0; i < num_tensors; ++i) {
      // Half model weights, half optimizer state of those weights.
      const bool opt = i % 2 == 1;
      const std::string param = absl::StrCat("layers.", i / 2, ".weight");
      dcp::ObjectPath path =
          opt ? dcp::ObjectPath{std::string("optimizer"), std::string("state"), param,
                                std::string("exp_avg")}
              : dcp::ObjectPath{std::string("model"), param};
      if (blocks[r].second == 0) continue;
      at::Tensor chunk = at::empty({blocks[r].second, kCols}, at::kFloat);
      chunk.fill_(static_cast<float>(i * 1000 + r));
      dcp::WriteItem item = dcp::WriteItem::Shard(dcp::FlattenedKey(path), chunk,
                                                  {blocks[r].first, 0}, {rows, kCols});
      item.path = path;
      items.push_back(std::move(item));
    }
    FABRIC_ASSIGN_OR_RETURN(std::vector<dcp::WriteResult> res, dcp::WriteRankFile(dir, r, items));
    results.push_back(std::move(res));
  }
  FABRIC_ASSIGN_OR_RETURN(const dcp::Metadata md,
                          dcp::BuildMetadata(results, dcp::NewStorageMeta(dir)));
  FABRIC_RETURN_IF_ERROR(dcp::WriteMetadata(dir, md));
  Dict meta;
  meta.Set("epoch", 2);
  meta.Set("hparams", Value(Dict{{"lr", 0.01}}));
  FABRIC_RETURN_IF_ERROR(TorchSave((fs::path(dir) / "meta.pt").string(), Value(std::move(meta))));
  return static_cast<uint64_t>(rows) * kCols * 4 * num_tensors;
}

namespace {
std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

ChildResult RunChild(const std::vector<std::string>& argv) {
  ChildResult result;
  static int counter = 0;
  const std::string base = FreshTestPath(absl::StrCat("child_", getpid(), "_", counter++));
  const std::string out = base + ".out", err = base + ".err";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const auto start = std::chrono::steady_clock::now();
  pid_t pid = 0;
  if (posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) {
    posix_spawn_file_actions_destroy(&actions);
    result.err = "spawn failed";
    return result;
  }
  posix_spawn_file_actions_destroy(&actions);
  int status = 0;
  struct rusage ru = {};
  while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.max_rss_kib = ru.ru_maxrss;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = Slurp(out);
  result.err = Slurp(err);
  return result;
}

}  // namespace fabric::tools
