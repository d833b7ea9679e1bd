"""Local stand-ins for the repositories Bazel 4.2.3 otherwise downloads.

Debian's bazel-bootstrap runs offline only if rules_cc, platforms, rules_java
and remote_coverage_tools resolve locally. platforms and rules_java come from
Debian's bazel-platforms and bazel-rules-java; Debian's bazel-rules-cc is too new
for 4.2.3 (it loads use_cpp_toolchain), so rules_cc is a shim that forwards to
the native rules; remote_coverage_tools is a stub (coverage is not used).
"""

_RULES_CC_DEFS = '''"""Forwards rules_cc's public macros to Bazel's native C++ rules."""

def cc_library(**kwargs):
    native.cc_library(**kwargs)

def cc_binary(**kwargs):
    native.cc_binary(**kwargs)

def cc_test(**kwargs):
    native.cc_test(**kwargs)

def cc_import(**kwargs):
    native.cc_import(**kwargs)

def cc_toolchain(**kwargs):
    native.cc_toolchain(**kwargs)

def cc_toolchain_suite(**kwargs):
    native.cc_toolchain_suite(**kwargs)

def cc_proto_library(**kwargs):
    native.cc_proto_library(**kwargs)

def objc_library(**kwargs):
    native.objc_library(**kwargs)
'''

def _rules_cc_shim_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "rules_cc")\n')
    ctx.file("BUILD.bazel", "")
    ctx.file("cc/BUILD.bazel", 'exports_files(["defs.bzl"])\n')
    ctx.file("cc/defs.bzl", _RULES_CC_DEFS)

_rules_cc_shim = repository_rule(implementation = _rules_cc_shim_impl)

def _coverage_stub_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "remote_coverage_tools")\n')
    ctx.file("coverage.sh", "#!/bin/sh\necho 'coverage is not supported in this offline build' >&2\nexit 1\n", executable = True)
    ctx.file("BUILD.bazel", """package(default_visibility = ["//visibility:public"])
sh_binary(name = "coverage_report_generator", srcs = ["coverage.sh"])
sh_binary(name = "lcov_merger", srcs = ["coverage.sh"])
""")

_coverage_stub = repository_rule(implementation = _coverage_stub_impl)

def _debian_rules_impl(ctx):
    path = ctx.os.environ.get(ctx.attr.env, ctx.attr.default_path)
    if not ctx.path(path + "/WORKSPACE").exists:
        fail("%s: no Bazel repository at %s; install Debian's %s (./setup.sh does) or set %s" %
             (ctx.name, path, ctx.attr.package, ctx.attr.env))
    for child in ctx.path(path).readdir():
        ctx.symlink(child, child.basename)

_debian_rules = repository_rule(
    implementation = _debian_rules_impl,
    attrs = {
        "default_path": attr.string(),
        "env": attr.string(),
        "package": attr.string(),
    },
    local = True,
)

def bazel_offline_shims():
    """Declares rules_cc, platforms, rules_java and remote_coverage_tools."""
    _rules_cc_shim(name = "rules_cc")
    _coverage_stub(name = "remote_coverage_tools")
    _debian_rules(
        name = "platforms",
        default_path = "/usr/share/bazel/tools/platforms",
        env = "BAZEL_PLATFORMS_DIR",
        package = "bazel-platforms",
    )
    _debian_rules(
        name = "rules_java",
        default_path = "/usr/share/bazel/rules/java",
        env = "BAZEL_RULES_JAVA_DIR",
        package = "bazel-rules-java",
    )
