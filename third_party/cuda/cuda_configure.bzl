"""Locates the local CUDA toolkit and NCCL, in the manner of XLA's cuda_configure.

  $CUDA_PATH (or $CUDA_HOME), default /usr/local/cuda: CUDA runtime headers and
  libraries; $NCCL_PATH, default the CUDA directory: nccl.h and libnccl.so.

They are needed only by targets built with --config=cuda. Without a toolkit the
repository still exists, and building a CUDA target fails naming what is missing.
"""

_ENV = ["CUDA_PATH", "CUDA_HOME", "NCCL_PATH"]

def _cuda_configure_impl(ctx):
    env = ctx.os.environ
    cuda = env.get("CUDA_PATH", env.get("CUDA_HOME", "/usr/local/cuda"))
    nccl = env.get("NCCL_PATH", cuda)
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    have_cuda = ctx.path(cuda + "/include/cuda_runtime.h").exists
    have_nccl = ctx.path(nccl + "/include/nccl.h").exists
    build = ['package(default_visibility = ["//visibility:public"])', ""]
    if have_cuda:
        ctx.symlink(cuda + "/include", "cuda/include")
        ctx.symlink(cuda + "/lib64", "cuda/lib64")
        build.append("""cc_library(
    name = "cuda_runtime",
    hdrs = glob(["cuda/include/**/*.h", "cuda/include/**/*.hpp"]),
    includes = ["cuda/include"],
    linkopts = ["-L%s/lib64", "-Wl,-rpath-link,%s/lib64", "-lcudart"],
)
""" % (cuda, cuda))
    else:
        build.append(_missing("cuda_runtime", "CUDA runtime (cuda_runtime.h) under %s; set CUDA_PATH" % cuda))
    if have_nccl:
        if nccl != cuda:
            ctx.symlink(nccl + "/include", "nccl/include")
        build.append("""cc_library(
    name = "nccl",
    linkopts = ["-L{lib}", "-Wl,-rpath-link,{lib}", "-lnccl"],
    deps = [":cuda_runtime"],
)
""".format(lib = nccl + "/lib64" if ctx.path(nccl + "/lib64").exists else nccl + "/lib"))
    else:
        build.append(_missing("nccl", "NCCL (nccl.h) under %s; set NCCL_PATH" % nccl))
    ctx.file("BUILD.bazel", "\n".join(build))
    ctx.file("defs.bzl", "CUDA_PATH = %r\nHAVE_CUDA = %s\nHAVE_NCCL = %s\n" % (cuda, have_cuda, have_nccl))

def _missing(name, what):
    return """genrule(
    name = "{name}_missing",
    outs = ["{name}_missing.h"],
    cmd = "echo 'fabric_cpp: --config=cuda needs the {what}' >&2; exit 1",
)

cc_library(name = "{name}", hdrs = [":{name}_missing"])
""".format(name = name, what = what)

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = _ENV,
    local = True,
)
