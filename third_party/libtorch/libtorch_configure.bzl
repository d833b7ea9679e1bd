"""Locates LibTorch on this machine and exposes it as @libtorch.

Where LibTorch is taken from, first match wins:
  1. $LIBTORCH_DIR: a directory with include/ and lib/ (an unpacked libtorch
     archive, or a torch package directory from any Python installation);
  2. $FABRIC_VENV: a virtual environment with the pinned torch wheel installed;
  3. the project's own virtual environment, <fabric_cpp>/.venv, made by setup.sh.

The version is checked against third_party/libtorch/pin.bzl, and the C++ ABI of
the libraries (_GLIBCXX_USE_CXX11_ABI) is read from their symbols so that every
target compiled against them agrees. $LIBTORCH_CXX11_ABI overrides the probe.

Targets:
  :torch_cpu   headers + libtorch_cpu + libc10 (no CUDA library needed), with
               c10d's Gloo backend enabled (USE_C10D_GLOO; Gloo's headers come
               from Debian's libgloo-dev, its code is inside libtorch_cpu).
  :torch_cuda  :torch_cpu + libtorch_cuda + libc10_cuda, NCCL enabled
               (USE_C10D_NCCL); only built under --config=cuda.
  :python      the interpreter of the virtual environment LibTorch came from,
               for interoperability tests against Python torch.
"""

load("//third_party/libtorch:pin.bzl", "TORCH_VERSION")

_ENV = ["LIBTORCH_DIR", "FABRIC_VENV", "LIBTORCH_CXX11_ABI"]

def _find_torch_dir(ctx):
    explicit = ctx.os.environ.get("LIBTORCH_DIR", "")
    if explicit:
        return ctx.path(explicit), None
    venv = ctx.os.environ.get("FABRIC_VENV", "")
    if not venv:
        venv = str(ctx.path(Label("//:WORKSPACE")).dirname) + "/.venv"
    venv_path = ctx.path(venv)
    if not venv_path.exists:
        fail("LibTorch not found: no $LIBTORCH_DIR, and no virtual environment at %s. " % venv +
             "Run ./setup.sh to create it, or set LIBTORCH_DIR or FABRIC_VENV.")
    lib = venv_path.get_child("lib")
    for child in lib.readdir():
        if child.basename.startswith("python3"):
            torch_dir = child.get_child("site-packages").get_child("torch")
            if torch_dir.exists:
                return torch_dir, venv_path
    fail("LibTorch not found: the virtual environment %s has no torch package; run ./setup.sh" % venv)

def _read_version(ctx, torch_dir):
    version_py = torch_dir.get_child("version.py")
    if version_py.exists:
        for line in ctx.read(version_py).splitlines():
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip("'\"")
    build_version = torch_dir.get_child("build-version")
    if build_version.exists:
        return ctx.read(build_version).strip()
    fail("cannot tell the LibTorch version in %s (no version.py, no build-version)" % torch_dir)

def _probe_cxx11_abi(ctx, libc10):
    forced = ctx.os.environ.get("LIBTORCH_CXX11_ABI", "")
    if forced:
        return forced
    result = ctx.execute(["sh", "-c", "nm -D --defined-only '%s' | grep -c '__cxx11' || true" % libc10])
    return "1" if result.stdout.strip() not in ["", "0"] else "0"

def _link_dirs(dirs):
    return ",\n        ".join(['"-Wl,-rpath-link,%s"' % d for d in dirs] + ['"-Wl,-rpath,%s"' % d for d in dirs])

def _libtorch_configure_impl(ctx):
    torch_dir, venv = _find_torch_dir(ctx)
    version = _read_version(ctx, torch_dir)
    if version.split("+")[0] != TORCH_VERSION:
        fail("LibTorch at %s is version %s but fabric_cpp is pinned to %s " % (torch_dir, version, TORCH_VERSION) +
             "(third_party/libtorch/pin.bzl); run ./setup.sh or point LIBTORCH_DIR at a matching install")
    lib_dir = torch_dir.get_child("lib")
    for name in ["libtorch_cpu.so", "libc10.so"]:
        if not lib_dir.get_child(name).exists:
            fail("LibTorch at %s has no lib/%s" % (torch_dir, name))
    abi = _probe_cxx11_abi(ctx, lib_dir.get_child("libc10.so"))

    ctx.symlink(torch_dir.get_child("include"), "include")
    for name in ["libtorch_cpu.so", "libc10.so", "libtorch.so", "libtorch_cuda.so", "libc10_cuda.so"]:
        if lib_dir.get_child(name).exists:
            ctx.symlink(lib_dir.get_child(name), "lib/" + name)

    # Directories the dynamic linker needs for the libraries' own dependencies
    # (libgomp next to libtorch; the CUDA wheels' libraries for libtorch_cuda).
    cpu_lib_dirs = [str(lib_dir)]
    cuda_lib_dirs = []
    nvidia = torch_dir.dirname.get_child("nvidia")
    if nvidia.exists:
        for pkg in nvidia.readdir():
            for sub in pkg.readdir():
                if sub.basename == "lib":
                    cuda_lib_dirs.append(str(sub))
                elif sub.get_child("lib").exists:
                    cuda_lib_dirs.append(str(sub.get_child("lib")))

    python = "/usr/bin/false"
    if venv:
        python = str(venv.get_child("bin").get_child("python3"))
    ctx.file("python.sh", "#!/bin/sh\n# The Python of the environment LibTorch came from.\nexec '%s' \"$@\"\n" % python, executable = True)

    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file("version.bzl", 'TORCH_VERSION = "%s"\nTORCH_DIR = "%s"\nCXX11_ABI = %s\n' % (version, torch_dir, abi))
    ctx.file("BUILD.bazel", """# Generated by third_party/libtorch/libtorch_configure.bzl from {torch_dir}
# LibTorch {version}, _GLIBCXX_USE_CXX11_ABI={abi}
package(default_visibility = ["//visibility:public"])

exports_files(["version.bzl"])

cc_library(
    name = "headers",
    hdrs = glob(
        ["include/**"],
        exclude = [
            "include/pybind11/**",
            "include/oneapi/**",
            "include/dnnl*",
            "include/tensorpipe/**",
            "include/kineto/**",
            "include/fbgemm/**",
            "include/torch/csrc/api/include/torch/python*",
        ],
    ),
    defines = ["_GLIBCXX_USE_CXX11_ABI={abi}"],
    includes = [
        "include",
        "include/torch/csrc/api/include",
    ],
)

cc_import(name = "libc10", shared_library = "lib/libc10.so")
cc_import(name = "libtorch_cpu_so", shared_library = "lib/libtorch_cpu.so")

cc_library(
    name = "torch_cpu",
    defines = ["USE_C10D_GLOO", "USE_DISTRIBUTED"],
    linkopts = [
        {cpu_link},
        "-pthread",
    ],
    deps = [":headers", ":libc10", ":libtorch_cpu_so"],
)

cc_import(name = "libc10_cuda", shared_library = "lib/libc10_cuda.so")
cc_import(name = "libtorch_cuda_so", shared_library = "lib/libtorch_cuda.so")
cc_import(name = "libtorch_so", shared_library = "lib/libtorch.so")

cc_library(
    name = "torch_cuda",
    defines = ["USE_C10D_NCCL", "USE_CUDA", "FABRIC_WITH_CUDA"],
    linkopts = [
        {cuda_link},
        # Keep libtorch_cuda linked although no symbol of it is referenced
        # directly: it registers the CUDA kernels and allocator at load time.
        "-Wl,--no-as-needed",
        "-ltorch_cuda",
        "-Wl,--as-needed",
        "-L{lib_dir}",
    ],
    deps = [
        ":torch_cpu",
        ":libc10_cuda",
        ":libtorch_cuda_so",
        ":libtorch_so",
        "@local_cuda//:cuda_runtime",
        "@local_cuda//:nccl",
    ],
)

sh_binary(name = "python", srcs = ["python.sh"])
""".format(
        torch_dir = torch_dir,
        version = version,
        abi = abi,
        lib_dir = lib_dir,
        cpu_link = _link_dirs(cpu_lib_dirs),
        cuda_link = _link_dirs(cuda_lib_dirs) if cuda_lib_dirs else '"-Wl,-rpath,%s"' % lib_dir,
    ))

libtorch_configure = repository_rule(
    implementation = _libtorch_configure_impl,
    environ = _ENV,
    local = True,
)
