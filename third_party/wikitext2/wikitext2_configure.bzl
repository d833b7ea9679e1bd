"""Locates the WikiText-2 text the trainer tests read, as @wikitext2.

$FABRIC_WIKITEXT2_DIR, else the project's shared data beside the workspace
(<fabric_cpp>/../shared/data/wikitext-2). The files found there (valid.txt,
test.txt and, where present, the train split) are linked into the repository,
so tests reach them through runfiles wherever the clone lives. Nothing is
downloaded.
"""

_FILES = ["valid.txt", "test.txt", "train.txt", "wikitext-2.txt"]

def _wikitext2_configure_impl(ctx):
    d = ctx.os.environ.get("FABRIC_WIKITEXT2_DIR", "")
    if not d:
        d = str(ctx.path(Label("//:WORKSPACE")).dirname.dirname) + "/shared/data/wikitext-2"
    found = []
    for name in _FILES:
        if ctx.path(d + "/" + name).exists:
            ctx.symlink(d + "/" + name, name)
            found.append(name)
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    build = ['package(default_visibility = ["//visibility:public"])', ""]
    if "valid.txt" not in found:
        # Targets that need the text fail with this message, the rest build.
        build.append("""genrule(
    name = "missing",
    outs = ["valid.txt"],
    cmd = "echo 'WikiText-2 text not found in {d}: set FABRIC_WIKITEXT2_DIR' >&2; exit 1",
)
""".format(d = d))
    build.append("exports_files(%r)" % found)
    build.append('filegroup(name = "files", srcs = %r)' % (found if "valid.txt" in found else found + ["valid.txt"]))
    ctx.file("BUILD.bazel", "\n".join(build) + "\n")

wikitext2_configure = repository_rule(
    implementation = _wikitext2_configure_impl,
    environ = ["FABRIC_WIKITEXT2_DIR"],
    local = True,
)
