// The saver and the checker of the same-path kinds of tools/crash_test.sh.
//
//   crash_saver --path=P --strategy=single_device|ddp|fsdp --devices=N [--state_dict_type=...]
//     saves the state of iteration k = 1, 2, 3, ... over the same path P, for
//     ever (until killed), and prints "saved k" once save k has returned on
//     every rank;
//   crash_saver --check=P --last_saved=K
//     loads P in one process (whatever wrote it) and checks that it holds one
//     iteration's state bit for bit: every parameter filled from that k,
//     and k = K or K + 1 (the save in flight when the
//     kill came may have committed before its "saved" line was printed);
//     K = -1: any k >= 1 (a run killed before its first save returned).
//   --async_save: saves with SaveAsync and overwrites every parameter with
//     -k while save k is in flight: a checkpoint holding any -k mixed in
//     fails the check.
//
// Iteration k's state is a function of k alone, so a check is exact.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "fabric/fabric.h"

ABSL_FLAG(std::string, path, "", "checkpoint path every save goes to");
ABSL_FLAG(std::string, strategy, "single_device", "single_device, ddp or fsdp");
ABSL_FLAG(int, devices, 1, "processes");
ABSL_FLAG(std::string, state_dict_type, "sharded", "FSDP: sharded or full");
ABSL_FLAG(std::string, check, "", "checkpoint to check instead of saving");
ABSL_FLAG(int64_t, last_saved, 0, "with --check: the last k printed as saved");
ABSL_FLAG(bool, async_save, false,
          "save with Fabric::SaveAsync, and overwrite the parameters while the "
          "save is in flight (the checkpoint must still hold iteration k)");
ABSL_FLAG(int64_t, width, 512, "the model's layer width (4 layers of width^2 floats)");

namespace fabric::tools {
namespace {

torch::nn::Sequential MakeModel() {
  const int64_t w = absl::GetFlag(FLAGS_width);
  return torch::nn::Sequential(torch::nn::Linear(w, w), torch::nn::Linear(w, w),
                               torch::nn::Linear(w, w), torch::nn::Linear(w, 1));
}

// Iteration k: every parameter value is k (so a mix of two iterations shows).
// Under FSDP these are the local shards: the module's own parameters have no
// storage outside a forward.
void Fill(const std::vector<at::Tensor>& params, int64_t k) {
  c10::NoGradGuard no_grad;
  for (const at::Tensor& p : params) p.fill_(static_cast<double>(k));
}

absl::Status Save() {
  FabricOptions options;
  options.accelerator = "cpu";
  options.strategy = absl::GetFlag(FLAGS_strategy);
  options.devices = absl::GetFlag(FLAGS_devices);
  options.state_dict_type = absl::GetFlag(FLAGS_state_dict_type);
  options.sharding_strategy = "shard_grad_op";
  options.option_prefix = "--";
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<Fabric> fabric, Fabric::Create(options));
  FABRIC_RETURN_IF_ERROR(fabric->Launch());
  auto model = MakeModel();
  FABRIC_RETURN_IF_ERROR(fabric->SetupModule(model));
  auto opt = std::make_shared<torch::optim::SGD>(fabric->Parameters(model),
                                                 torch::optim::SGDOptions(0.1));
  const std::string path = absl::GetFlag(FLAGS_path);
  for (int64_t k = 1;; ++k) {
    Fill(fabric->Parameters(model), k);
    State state{{"model", model}, {"optimizer", opt}, {"iteration", k}};
    if (absl::GetFlag(FLAGS_async_save)) {
      FABRIC_ASSIGN_OR_RETURN(SaveHandle handle, fabric->SaveAsync(path, state));
      // Training goes on in place while the background write runs.
      Fill(fabric->Parameters(model), -k);
      FABRIC_RETURN_IF_ERROR(handle.Wait());
    } else {
      FABRIC_RETURN_IF_ERROR(fabric->Save(path, state));
    }
    FABRIC_RETURN_IF_ERROR(fabric->Barrier());
    if (fabric->is_global_zero()) {
      std::printf("saved %lld\n", static_cast<long long>(k));
      std::fflush(stdout);
    }
  }
}

absl::Status Check() {
  const std::string path = absl::GetFlag(FLAGS_check);
  FabricOptions options;
  options.accelerator = "cpu";
  options.strategy = "single_device";
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<Fabric> fabric, Fabric::Create(options));
  auto model = MakeModel();
  FABRIC_RETURN_IF_ERROR(fabric->SetupModule(model));
  Fill(model->parameters(), -1);
  State state{{"model", model}, {"iteration", int64_t{-1}}};
  FABRIC_ASSIGN_OR_RETURN(Dict rest, fabric->Load(path, state, /*strict=*/false));
  const int64_t k = state["iteration"].value().as_int();
  const int64_t last = absl::GetFlag(FLAGS_last_saved);
  if (last >= 0 ? (k != last && k != last + 1) : k < 1) {
    return absl::DataLossError(absl::StrCat("'", path, "' holds iteration ", k,
                                            " but the last save that returned was ", last));
  }
  const std::vector<at::Tensor> params = model->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    const double want = static_cast<double>(k);
    if (!params[i].eq(want).all().item<bool>()) {
      return absl::DataLossError(absl::StrCat("'", path, "': parameter ", i,
                                              " is not all ", want, " (iteration ", k, ")"));
    }
  }
  std::printf("ok: iteration %lld\n", static_cast<long long>(k));
  return absl::OkStatus();
}

}  // namespace
}  // namespace fabric::tools

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const absl::Status s =
      absl::GetFlag(FLAGS_check).empty() ? fabric::tools::Save() : fabric::tools::Check();
  if (!s.ok()) {
    std::fprintf(stderr, "crash_saver: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
