// A user program under Fabric with DDP or FSDP (--strategy=fsdp): it launches its own ranks
// (--devices=N), trains, saves a checkpoint (rank 0 writes one file) or
// resumes from one on any number of ranks. Driven by fabric_ddp_test.
//
//   ddp_program --devices=4 --out=DIR/a.pt --steps=5
//   ddp_program --devices=2 --resume=DIR/a.pt --out=DIR/b.pt --steps=3
#include <cstdio>
#include <string>

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include "absl/strings/str_cat.h"
#include "fabric/fabric.h"
#include "tests/fabric_ddp/ddp_common.h"

int main(int argc, char** argv) {
  int devices = 1, steps = 0;
  std::string out, resume, strategy, state_dict_type = "sharded";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--devices=", 0) == 0) devices = std::stoi(a.substr(10));
    else if (a.rfind("--steps=", 0) == 0) steps = std::stoi(a.substr(8));
    else if (a.rfind("--out=", 0) == 0) out = a.substr(6);
    else if (a.rfind("--resume=", 0) == 0) resume = a.substr(9);
    else if (a.rfind("--strategy=", 0) == 0) strategy = a.substr(11);
    else if (a.rfind("--state_dict_type=", 0) == 0) state_dict_type = a.substr(18);
  }
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "ddp_program: %s\n", s.ToString().c_str());
    return 1;
  };
  fabric::FabricOptions options;
  options.accelerator = "cpu";
  options.devices = devices;
  options.strategy = !strategy.empty() ? strategy : devices > 1 ? "ddp" : "auto";
  options.state_dict_type = state_dict_type;
  auto f = fabric::Fabric::Create(options);
  if (!f.ok()) return fail(f.status());
  fabric::Fabric& fabric = **f;
  if (auto s = fabric.Launch(); !s.ok()) return fail(s);

  // Fabric's collectives: every rank contributes its rank number.
  {
    at::Tensor r = at::full({2}, static_cast<float>(fabric.global_rank()));
    if (auto s = fabric.AllReduce(r); !s.ok()) return fail(s);
    const float want = fabric.world_size() * (fabric.world_size() - 1) / 2.0f;
    auto gathered = fabric.AllGather(at::full({1}, static_cast<float>(fabric.global_rank())));
    if (!gathered.ok()) return fail(gathered.status());
    bool ok = r[0].item<float>() == want && gathered->size() == size_t(fabric.world_size());
    for (size_t i = 0; ok && i < gathered->size(); ++i) ok = (*gathered)[i].item<float>() == i;
    at::Tensor b = at::full({1}, fabric.global_rank() == 0 ? 7.0f : 0.0f);
    if (auto s = fabric.Broadcast(b); !s.ok()) return fail(s);
    ok = ok && b.item<float>() == 7.0f;
    int order = 0;
    if (auto s = fabric.RankZeroFirst([&] { order = 1; return absl::OkStatus(); }); !s.ok()) {
      return fail(s);
    }
    if (!ok || order != 1) return fail(absl::InternalError("Fabric collectives gave wrong results"));
  }
  auto model = fabric_test::MakeModel();
  if (auto s = fabric.SetupModule(model); !s.ok()) return fail(s);
  auto opt = fabric_test::MakeOptimizer(fabric.Parameters(model));
  int64_t step = 0;
  fabric::State state{{"model", model}, {"optimizer", opt}, {"step", step}};
  if (!resume.empty()) {
    auto rest = fabric.Load(resume, state);
    if (!rest.ok()) return fail(rest.status());
    step = state["step"].value().as_int();
  }
  for (int i = 0; i < steps; ++i, ++step) {
    auto [x, y] = fabric_test::GlobalBatch(step);
    // Each rank takes its slice of the global batch.
    const int64_t per = x.size(0) / fabric.world_size();
    x = x.narrow(0, per * fabric.global_rank(), per);
    y = y.narrow(0, per * fabric.global_rank(), per);
    opt->zero_grad();
    at::Tensor loss = fabric.Forward(*model, [&] { return fabric_test::Loss(model, x, y); });
    if (auto s = fabric.Backward(loss); !s.ok()) return fail(s);
    opt->step();
  }
  state["step"] = step;
  if (auto s = fabric.Save(out, state); !s.ok()) return fail(s);
  fabric.Print(absl::StrCat("rank 0 of ", fabric.world_size(), ": saved step ", step, " to ", out));
  if (auto s = fabric.Finish(); !s.ok()) return fail(s);
  return 0;
}
