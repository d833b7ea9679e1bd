"""Python side of Python -> C++: writes checkpoints with torch.save and
Lightning Fabric, and what training should reach after resuming."""
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interop_common as common  # noqa: E402

out = sys.argv[1]
torch.manual_seed(0)
x, y = common.make_data()
state = {"step": 3, "x": x, "y": y}
expected = {}
for name in common.OPTIMIZERS:
    model = common.make_model()
    opt = common.make_optimizer(name, model.parameters())
    common.train(model, opt, x, y, 3)
    # Copies: the checkpoint holds the state after 3 steps, training goes on.
    state[f"model_{name}"] = copy.deepcopy(model.state_dict())
    state[f"optimizer_{name}"] = copy.deepcopy(opt.state_dict())
    common.train(model, opt, x, y, 2)
    for k, v in model.state_dict().items():
        expected[f"{name}.{k}"] = v.clone()
tensors, plain = common.misc_values()
state["misc"] = dict(tensors, **plain)
torch.save(state, os.path.join(out, "python_ckpt.pt"))
torch.save(expected, os.path.join(out, "python_expected.pt"))
common.write_raw(tensors, os.path.join(out, "python_misc"))

# A bare state dict, as people usually save one.
torch.save(common.make_model().state_dict(), os.path.join(out, "python_raw_state_dict.pt"))

# Lightning Fabric's own save of a model, an optimizer and a counter.
from lightning.fabric import Fabric  # noqa: E402

fabric = Fabric(accelerator="cpu", devices=1)
model = common.make_model()
opt = common.make_optimizer("adamw", model.parameters())
model, opt = fabric.setup(model, opt)
common.train(model, opt, x, y, 1)
fabric.save(os.path.join(out, "lightning_ckpt.pt"), {"model": model, "optimizer": opt, "epoch": 4})
print("python checkpoints written to", out)
