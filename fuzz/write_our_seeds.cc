// Writes the fuzz seeds that our own writers make (fuzz/make_seeds.sh):
//   write_our_seeds OUT_DIR
// OUT_DIR/<target>/ours_*: small pickles, torch.save files, a DCP folder's
// .metadata, and the folder itself in the FZF1 form (fuzz_files.h).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_writer.h"
#include "checkpoint/pickle_writer.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "fuzz/fuzz_files.h"

namespace {

namespace fs = std::filesystem;
using fabric::Dict;
using fabric::Value;

std::string Read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void Write(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

template <typename T>
T Check(absl::StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s\n", std::string(v.status().message()).c_str());
    std::exit(1);
  }
  return *std::move(v);
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
}

// A small state dict like a trainer's: parameters, optimizer state, plain values.
Value StateDict() {
  Dict model{{"layer.weight", Value(torch::arange(6, torch::kFloat).reshape({2, 3}))},
             {"layer.bias", Value(torch::ones({2}, torch::kBFloat16))},
             {"steps", Value(torch::tensor(int64_t{7}))}};
  Dict group{{"lr", Value(0.01)}, {"params", Value::List({Value(0), Value(1)})}};
  Dict optimizer{{"state", Value(Dict{{Value(0), Value(Dict{{"step", Value(3)}})}})},
                 {"param_groups", Value::List({Value(group)})}};
  return Value(Dict{{"model", Value(model)},
                    {"optimizer", Value(optimizer)},
                    {"epoch", Value(2)},
                    {"name", Value("run-1")},
                    {"ratio", Value(0.5)},
                    {"flags", Value::Tuple({Value(true), Value(), Value::Bytes("\x01\x02")})}});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: write_our_seeds OUT_DIR\n");
    return 2;
  }
  const fs::path out = argv[1];
  const fs::path tmp = out / "tmp_ours";
  fs::create_directories(tmp);

  // Plain pickles, protocols 2 and 4.
  const Value plain = Value(Dict{{"a", Value::List({Value(1), Value(-70000), Value(1.5)})},
                                 {"b", Value::Tuple({Value("x"), Value::Bytes("yz")})},
                                 {"big", Value(int64_t{1} << 40)}});
  Write(out / "pickle/ours_plain_p2.pkl", Check(fabric::pickle::Pickle(plain, 2)));
  Write(out / "pickle/ours_plain_p4.pkl", Check(fabric::pickle::Pickle(plain, 4)));

  // A torch.save file: its data.pkl is a pickle seed, the file a zip, torch
  // file and cli seed.
  const std::string pt = (tmp / "ours.pt").string();
  fabric::TorchSaveOptions options;
  options.direct_io = false;
  Check(fabric::TorchSave(pt, StateDict(), options));
  const std::string pt_bytes = Read(pt);
  Write(out / "zip/ours_state.pt", pt_bytes);
  Write(out / "torch_file/ours_state.pt", pt_bytes);
  Write(out / "cli/ours_state.pt", pt_bytes);
  {
    auto f = Check(fabric::TorchFile::Open(pt));
    Write(out / "pickle/ours_state_data.pkl", Check(f->zip().ReadRecord("data.pkl")));
  }

  // A DCP folder: one rank, a tensor, a shard pair and a bytes item.
  const std::string dir = (tmp / "ours_dcp").string();
  namespace dcp = fabric::dcp;
  std::vector<dcp::WriteItem> items;
  items.push_back(dcp::WriteItem::Tensor("model.w", torch::arange(4, torch::kFloat)));
  items.push_back(dcp::WriteItem::Shard("model.e", torch::ones({1, 2}), {0, 0}, {2, 2}));
  items.push_back(dcp::WriteItem::Shard("model.e", torch::zeros({1, 2}), {1, 0}, {2, 2}));
  items.push_back(dcp::WriteItem::Object("epoch", Value(3)));
  dcp::WriteOptions wo;
  wo.direct_io = false;
  std::vector<dcp::WriteResult> results = Check(dcp::WriteRankFile(dir, 0, items, wo));
  const dcp::Metadata md = Check(dcp::BuildMetadata({results}, dcp::NewStorageMeta(dir)));
  Check(dcp::WriteMetadata(dir, md));
  const std::string metadata = Read(fs::path(dir) / ".metadata");
  const std::string shard = Read(fs::path(dir) / dcp::RankFileName(0));
  Write(out / "dcp_metadata/ours.metadata", metadata);
  Write(out / "pickle/ours.metadata", metadata);
  Write(out / "zip/ours_0_0.distcp", shard);
  Write(out / "cli/ours_dcp.fzf",
        fabric::fuzz::JoinFolder({{".metadata", metadata}, {dcp::RankFileName(0), shard}}));

  fs::remove_all(tmp);
  std::printf("wrote our seeds under %s\n", out.c_str());
  return 0;
}
