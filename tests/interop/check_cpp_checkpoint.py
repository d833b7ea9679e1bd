"""Python side of C++ -> Python: loads the C++ checkpoint with torch.load
(weights_only=True, the safe default) and with Lightning Fabric, restores the
models and optimizers, continues training, and saves the results for C++."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interop_common as common  # noqa: E402

path, out = sys.argv[1], sys.argv[2]
ckpt = torch.load(path, weights_only=True)
x, y = ckpt["x"], ckpt["y"]
assert ckpt["step"] == 3, ckpt["step"]
results = {}
for name in common.OPTIMIZERS:
    model = common.make_model()
    opt = common.make_optimizer(name, model.parameters())
    model.load_state_dict(ckpt[f"model_{name}"], strict=True)
    sd = ckpt[f"optimizer_{name}"]
    reference = common.make_optimizer(name, common.make_model().parameters()).state_dict()
    # The param_groups carry the same hyperparameter keys as Python's own.
    assert sorted(sd["param_groups"][0]) == sorted(reference["param_groups"][0]), (
        name, sorted(sd["param_groups"][0]), sorted(reference["param_groups"][0]))
    opt.load_state_dict(sd)
    if name != "sgd":
        step = opt.state_dict()["state"][0]["step"]
        assert torch.is_tensor(step) and step.dtype == torch.float32 and float(step) == 3.0, step
    common.train(model, opt, x, y, 2)
    for k, v in model.state_dict().items():
        results[f"{name}.{k}"] = v.clone()
# Re-save the misc values as Python sees them, for a bit-exact check in C++.
results["misc"] = ckpt["misc"]
torch.save(results, os.path.join(out, "python_continued.pt"))

# Lightning Fabric loads the same file into its own wrapped objects.
from lightning.fabric import Fabric  # noqa: E402

fabric = Fabric(accelerator="cpu", devices=1)
model = common.make_model()
opt = common.make_optimizer("adamw", model.parameters())
model, opt = fabric.setup(model, opt)
remainder = fabric.load(path, {"model_adamw": model, "optimizer_adamw": opt})
assert "step" in remainder and "misc" in remainder, sorted(remainder)
print("python loaded the C++ checkpoint: OK")
