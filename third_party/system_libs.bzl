"""A repository for a library installed by the system package manager.

The headers stay in the system include path, so the generated targets only
carry link options; the repository rule fails early, naming the Debian package
to install, when the library's header is missing.
"""

def _system_library_repository_impl(ctx):
    include_dirs = ctx.os.environ.get("FABRIC_SYSTEM_INCLUDE", "/usr/include").split(":")
    found = [d for d in include_dirs if ctx.path(d + "/" + ctx.attr.probe_header).exists]
    if not found:
        fail("%s: header <%s> not found in %s; install it with: apt-get install %s (or run ./setup.sh)" %
             (ctx.name, ctx.attr.probe_header, ":".join(include_dirs), ctx.attr.package))
    ctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % ctx.name)
    for path, label in ctx.attr.build_files.items():
        ctx.symlink(ctx.path(Label(label)), path)

system_library_repository = repository_rule(
    implementation = _system_library_repository_impl,
    attrs = {
        "build_files": attr.string_dict(doc = "path in the repository -> label of its BUILD file"),
        "probe_header": attr.string(mandatory = True),
        "package": attr.string(mandatory = True, doc = "Debian package(s) that provide it"),
    },
    environ = ["FABRIC_SYSTEM_INCLUDE"],
    local = True,
)
