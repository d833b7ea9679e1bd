// A user program that starts from Hugging Face weights: it launches its ranks
// (--devices=N, --strategy=fsdp|ddp|single_device), sets up its model, loads a
// safetensors file or sharded folder with Fabric::LoadRaw, and checks on every
// rank what it holds against the file: under FSDP its shards are exactly its
// rows of each tensor, and the bytes it read (/proc/self/io rchar) are about
// its share, not the whole file. Driven by hf_load_test.
//
//   hf_load_program --devices=2 --strategy=fsdp --weights=DIR/w.safetensors
//   hf_load_program ... --expect_error=TEXT   # LoadRaw must fail with TEXT on every rank
#include <cstdio>
#include <fstream>
#include <string>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/safetensors_index.h"
#include "fabric/fabric.h"
#include "tests/safetensors/hf_model.h"

namespace {

// Bytes this process has read through read/pread so far.
long long ReadChars() {
  std::ifstream io("/proc/self/io");
  std::string key;
  long long value = -1;
  while (io >> key >> value) {
    if (key == "rchar:") return value;
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 1;
  std::string strategy = "auto", weights, expect_error;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--devices=", 0) == 0) devices = std::stoi(a.substr(10));
    else if (a.rfind("--strategy=", 0) == 0) strategy = a.substr(11);
    else if (a.rfind("--weights=", 0) == 0) weights = a.substr(10);
    else if (a.rfind("--expect_error=", 0) == 0) expect_error = a.substr(15);
  }
  auto fail = [](const std::string& what) {
    std::fprintf(stderr, "hf_load_program: %s\n", what.c_str());
    return 1;
  };
  fabric::FabricOptions options;
  options.accelerator = "cpu";
  options.devices = devices;
  options.strategy = strategy;
  auto f = fabric::Fabric::Create(options);
  if (!f.ok()) return fail(f.status().ToString());
  fabric::Fabric& fabric = **f;
  if (auto s = fabric.Launch(); !s.ok()) return fail(s.ToString());
  auto model = hf_test::MakeModel(/*seed=*/1);
  if (auto s = fabric.SetupModule(model); !s.ok()) return fail(s.ToString());

  const long long before = ReadChars();
  absl::Status loaded = fabric.LoadRaw(weights, *model, /*strict=*/true);
  const long long read = ReadChars() - before;
  const std::string rank = absl::StrCat("rank ", fabric.global_rank(), "/", fabric.world_size());
  if (!expect_error.empty()) {
    if (loaded.ok() || std::string(loaded.message()).find(expect_error) == std::string::npos) {
      return fail(absl::StrCat(rank, ": expected an error with '", expect_error, "', got ",
                               loaded.ToString()));
    }
    std::printf("%s: refused as expected: %s\n", rank.c_str(), std::string(loaded.message()).c_str());
    if (auto s = fabric.Finish(); !s.ok()) return fail(s.ToString());
    return 0;
  }
  if (!loaded.ok()) return fail(absl::StrCat(rank, ": ", loaded.ToString()));

  auto checkpoint = fabric::SafetensorsCheckpoint::Open(weights);
  if (!checkpoint.ok()) return fail(checkpoint.status().ToString());
  auto file_tensor = [&](const std::string& name) {
    const auto* t = (*checkpoint)->Find(name);
    at::Tensor out = at::empty(t->info->shape, at::TensorOptions().dtype(t->info->dtype));
    (void)t->file->ReadInto(*t->info, out);
    return out;
  };
  if (fabric::strategies::FullyShardedDataParallel* fsdp = fabric.Fsdp(*model)) {
    for (const auto& p : fsdp->params()) {
      if (!p.shard.equal(p.LocalRows(file_tensor(p.fqn)))) {
        return fail(absl::StrCat(rank, ": shard of ", p.fqn, " is not rows [", p.row_offset, ", ",
                                 p.row_offset + p.local_rows, ") of the file"));
      }
    }
    if (auto s = fsdp->GatherFullParameters(); !s.ok()) return fail(s.ToString());
  }
  for (const auto& p : model->named_parameters()) {
    if (!p.value().equal(file_tensor(p.key()))) {
      return fail(absl::StrCat(rank, ": ", p.key(), " differs from the file"));
    }
  }
  std::printf("%s: ok, %zu parameters equal the file; read %lld of %llu tensor bytes\n",
              rank.c_str(), model->named_parameters().size(), read,
              static_cast<unsigned long long>((*checkpoint)->tensor_bytes()));
  std::fflush(stdout);
  if (auto s = fabric.Finish(); !s.ok()) return fail(s.ToString());
  return 0;
}
