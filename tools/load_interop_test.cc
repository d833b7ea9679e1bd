// A consolidated checkpoint loads through fabric's own single-device loading
// (LoadStateFromCheckpoint, what Fabric::Load runs): the module's weights and
// the plain values come back bit-exact.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "checkpoint/dcp_writer.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/state.h"
#include "checkpoint/state_io.h"
#include "tools/consolidate.h"
#include "tools/test_util.h"

namespace fabric::tools {
namespace {

struct Net : torch::nn::Module {
  Net() : layer(register_module("layer", torch::nn::Linear(5, 7))) {}
  torch::nn::Linear layer;
};

TEST(LoadInterop, ConsolidatedFileLoadsIntoAModule) {
  const std::string dir = FreshTestPath("load_interop");
  at::manual_seed(0);
  const at::Tensor w = at::randn({7, 5}), b = at::randn({7});
  // Two "ranks", each holding a block of rows, plus meta.pt.
  std::vector<std::vector<dcp::WriteResult>> results;
  ASSERT_TRUE(dcp::PrepareCheckpointDir(dir).ok());
  for (int r = 0; r < 2; ++r) {
    const int64_t lo = r == 0 ? 0 : 4, n = r == 0 ? 4 : 3;
    std::vector<dcp::WriteItem> items;
    items.push_back(dcp::WriteItem::Shard("model.layer.weight", w.narrow(0, lo, n).contiguous(),
                                          {lo, 0}, {7, 5}));
    items.back().path = {std::string("model"), std::string("layer.weight")};
    items.push_back(
        dcp::WriteItem::Shard("model.layer.bias", b.narrow(0, lo, n).contiguous(), {lo}, {7}));
    items.back().path = {std::string("model"), std::string("layer.bias")};
    auto res = dcp::WriteRankFile(dir, r, items);
    ASSERT_TRUE(res.ok()) << res.status();
    results.push_back(*res);
  }
  auto md = dcp::BuildMetadata(results, dcp::NewStorageMeta(dir));
  ASSERT_TRUE(md.ok()) << md.status();
  ASSERT_TRUE(dcp::WriteMetadata(dir, *md).ok());
  ASSERT_TRUE(TorchSave(dir + "/meta.pt", Value(Dict{{"step", 42}})).ok());

  auto stats = Consolidate(dir);
  ASSERT_TRUE(stats.ok()) << stats.status();

  auto net = std::make_shared<Net>();
  State state;
  state.Set("model", std::static_pointer_cast<torch::nn::Module>(net));
  state.Set("step", 0);
  auto file = TorchFile::Open(stats->output_file);
  ASSERT_TRUE(file.ok()) << file.status();
  auto rest = LoadStateFromCheckpoint(**file, state, /*strict=*/true);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_TRUE(at::equal(net->layer->weight, w));
  EXPECT_TRUE(at::equal(net->layer->bias, b));
  EXPECT_EQ(state["step"].value().as_int(), 42);

  // And the model entry on its own, as load_raw reads a bare state dict.
  auto model_only = FreshTestPath("load_interop_model.pt");
  auto all = TorchLoad(stats->output_file);
  ASSERT_TRUE(all.ok());
  ASSERT_TRUE(TorchSave(model_only, *all->as_dict().Find("model")).ok());
  auto raw_file = TorchFile::Open(model_only);
  ASSERT_TRUE(raw_file.ok());
  auto fresh = std::make_shared<Net>();
  ASSERT_TRUE(LoadRawModule(**raw_file, *fresh, /*strict=*/true).ok());
  EXPECT_TRUE(at::equal(fresh->layer->weight, w));
}

}  // namespace
}  // namespace fabric::tools
