"""The LibTorch version fabric_cpp is built and tested against.

It must match the torch wheel that setup.sh installs (third_party/python/requirements.txt)
and the GPU machines' torch 2.11.0+cu130.
"""

TORCH_VERSION = "2.11.0"
