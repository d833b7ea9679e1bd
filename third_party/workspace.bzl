"""All external dependencies of fabric_cpp, located on the local machine.

Call fabric_cpp_dependencies() from the WORKSPACE of this repository or of any
workspace that uses fabric_cpp through local_repository().
"""

load("//third_party/bazel_shims:shims.bzl", "bazel_offline_shims")
load("//third_party/libtorch:libtorch_configure.bzl", "libtorch_configure")
load("//third_party/cuda:cuda_configure.bzl", "cuda_configure")
load("//third_party:system_libs.bzl", "system_library_repository")
load("//third_party/wikitext2:wikitext2_configure.bzl", "wikitext2_configure")

def fabric_cpp_dependencies():
    """Declares every repository fabric_cpp's targets depend on."""
    bazel_offline_shims()
    libtorch_configure(name = "libtorch")
    cuda_configure(name = "local_cuda")
    wikitext2_configure(name = "wikitext2")

    # Abseil, GoogleTest, Google Benchmark, ISA-L and nlohmann/json come from Debian's -dev
    # packages: headers in /usr/include, shared libraries on the default path.
    system_library_repository(
        name = "com_google_absl",
        build_files = {
            "absl/status/BUILD.bazel": "//third_party/absl:status.BUILD",
            "absl/strings/BUILD.bazel": "//third_party/absl:strings.BUILD",
            "absl/synchronization/BUILD.bazel": "//third_party/absl:synchronization.BUILD",
            "absl/time/BUILD.bazel": "//third_party/absl:time.BUILD",
            "absl/flags/BUILD.bazel": "//third_party/absl:flags.BUILD",
            "absl/container/BUILD.bazel": "//third_party/absl:container.BUILD",
            "absl/cleanup/BUILD.bazel": "//third_party/absl:cleanup.BUILD",
        },
        probe_header = "absl/status/statusor.h",
        package = "libabsl-dev",
    )
    system_library_repository(
        name = "com_google_googletest",
        build_files = {"BUILD.bazel": "//third_party/googletest:googletest.BUILD"},
        probe_header = "gtest/gtest.h",
        package = "libgtest-dev libgmock-dev",
    )
    system_library_repository(
        name = "com_github_google_benchmark",
        build_files = {"BUILD.bazel": "//third_party/benchmark:benchmark.BUILD"},
        probe_header = "benchmark/benchmark.h",
        package = "libbenchmark-dev",
    )
    system_library_repository(
        name = "isal",
        build_files = {"BUILD.bazel": "//third_party/isal:isal.BUILD"},
        probe_header = "isa-l/crc.h",
        package = "libisal-dev",
    )
    system_library_repository(
        name = "nlohmann_json",
        build_files = {"BUILD.bazel": "//third_party/json:json.BUILD"},
        probe_header = "nlohmann/json.hpp",
        package = "nlohmann-json3-dev",
    )
