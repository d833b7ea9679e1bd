"""fabric_fuzz_target: one fuzz target in its three forms."""

def fabric_fuzz_target(name, srcs, deps, corpus, mutations = 2000):
    """A fuzz target `name` over the seed corpus folder `corpus`.

    name: the binary; libFuzzer's main under --config=fuzz (manual, tag fuzz),
          else the smoke driver (fuzz/smoke_main.cc).
    name + "_smoke_test": the target over its seeds and `mutations`
          deterministic mutations of them, in the ordinary build.
    """
    lib = name + "_lib"
    native.cc_library(
        name = lib,
        testonly = True,
        srcs = srcs,
        deps = deps,
        alwayslink = True,
    )
    native.cc_binary(
        name = name,
        testonly = True,
        deps = [":" + lib] + select({
            "//fuzz:libfuzzer": [],
            "//conditions:default": ["//fuzz:smoke_main"],
        }),
        linkopts = select({
            "//fuzz:libfuzzer": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        tags = ["fuzz", "manual"],
    )
    native.cc_test(
        name = name + "_smoke_test",
        size = "medium",
        args = ["--mutations=%d" % mutations, "fuzz/" + corpus],
        data = native.glob([corpus + "/**"]),
        deps = [":" + lib, "//fuzz:smoke_main"],
    )
