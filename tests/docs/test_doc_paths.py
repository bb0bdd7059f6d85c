"""The docs name only what exists: every repository path and `make` target in README.md
and docs/ is checked against the repository and the Makefile, so moving a file or
renaming a target cannot leave the docs pointing at nothing.

What counts as a path: text starting with a top-level directory of the repository
(`native/`, `jvm-shim/`, `python/`, ...) anywhere in a document, and the target of every
relative Markdown link (resolved against the document's directory, as GitHub does).
Globs (`*`, `{a,b}`) must match at least one file. Paths that builds create are not in
the repository; GENERATED lists them, each with what creates it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

TOP_LEVEL = ("native", "jvm-shim", "python", "tests", "examples", "bench", "docs", ".ci", "target")
# A path starts where no word, path or placeholder character precedes it (so not inside
# a URL, `$PWD/...` or `<runDir>/...`) and runs over path characters.
PATH = re.compile(
    r"(?<![\w./$<>~-])((?:" + "|".join(map(re.escape, TOP_LEVEL)) + r")/[\w./*{},-]*)"
)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
MAKE = re.compile(r"(?:^|[\s;&|(])make\s+([^\n#]*)")

# Paths the build, demo or benchmarks create (all ignored by git), with what creates
# them. A trailing "/" covers everything under the directory as well.
GENERATED = {
    "target": "cargo's target directory, where make keeps every build product and cache",
    "target/release/stoker": "the server and CLI binary (make native)",
    "target/release/libstoker_jni.so": "the JNI library (make native)",
    "target/cargo-home": "cargo's registry cache (CARGO_HOME in the Makefile)",
    "target/pip-cache": "pip's cache (PIP_CACHE_DIR in the Makefile)",
    "target/m2": "Maven's local repository (make jvm)",
    "target/stamps": "make's stamp files",
    "target/stamps/pyspark-repo": "the stamp of linking pyspark's jars into target/m2",
    "jvm-shim/target/stoker-spark.jar": "the Spark jar (make jvm)",
    "examples/out/": "what make demo writes: predictions and the loss plot",
    "bench/results/": "make bench's raw results",
}


def repository_files() -> set[str]:
    """Files in the repository: tracked, or new and not ignored (so a document and the
    file it names can arrive in one commit); the file system outside git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        return {f for f in out.split("\0") if f and (ROOT / f).exists()}
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "target", "__pycache__", ".pytest_cache", ".ruff_cache"}
        found = set()
        for base, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in skip]
            for n in names:
                found.add(os.path.relpath(os.path.join(base, n), ROOT))
        return found


FILES = repository_files()
DIRS = {str(Path(f).parents[i]) for f in FILES for i in range(len(Path(f).parts) - 1)}


def expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [
        p
        for alt in m.group(1).split(",")
        for p in expand_braces(path[: m.start()] + alt + path[m.end() :])
    ]


def generated(path: str) -> bool:
    return path in GENERATED or any(
        g.endswith("/") and (path + "/").startswith(g) for g in GENERATED
    )


def exists(path: str) -> bool:
    path = path.rstrip("/")
    if not path or path == ".":
        return True
    if generated(path):
        return True
    if any(c in path for c in "*?["):
        return any(fnmatch.fnmatch(f, path) or fnmatch.fnmatch(f, path + "/*") for f in FILES)
    return path in FILES or path in DIRS


def clean(path: str) -> str:
    # Sentence punctuation after a path, and "..." for "and what is under it".
    return re.sub(r"(\.\.\.|[.,;:])+$", "", path)


def blank(text: str, pattern: re.Pattern, group: int = 0) -> str:
    """`text` with each match of `pattern` (its `group`) turned into spaces, lines kept."""
    return pattern.sub(
        lambda m: (
            m.group(0)[: m.start(group) - m.start(0)]
            + re.sub(r"[^\n]", " ", m.group(group))
            + m.group(0)[m.end(group) - m.start(0) :]
        ),
        text,
    )


def paths_in(doc: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, repository-relative path) of every path the document names."""
    text = doc.read_text(encoding="utf-8") if text is None else text
    found = []

    def line(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    # Link targets resolve against the document's directory (links in code are code);
    # then they are blanked so that the scan for repository paths below, which reads
    # code too, does not take them as relative to the root.
    prose = blank(blank(text, FENCE), CODE_SPAN)
    scan = text
    for pattern in (LINK, REFERENCE):
        for m in pattern.finditer(prose):
            target = m.group(1)
            scan = scan[: m.start(1)] + " " * len(target) + scan[m.end(1) :]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                continue
            target = target.split("#", 1)[0]
            resolved = os.path.relpath(os.path.normpath(doc.parent / target), ROOT)
            found.append((line(m.start(1)), resolved))
    for m in PATH.finditer(scan):
        path = clean(m.group(1))
        found.append((line(m.start()), path))
    return found


def make_targets_in(doc: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, target) of every `make` command in code: fenced blocks and code spans
    (prose such as "make sure" is not a command)."""
    text = doc.read_text(encoding="utf-8") if text is None else text
    code = [(m.start(2), m.group(2)) for m in FENCE.finditer(text)]
    code += [(m.start(2), m.group(2)) for m in CODE_SPAN.finditer(blank(text, FENCE))]
    found = []
    for start, snippet in code:
        # Shell comments, kept at their length so that positions stay right.
        snippet = re.sub(r"(?<!\S)#[^\n]*", lambda c: " " * len(c.group(0)), snippet)
        for m in MAKE.finditer(snippet):
            for word in m.group(1).split():
                if not re.fullmatch(r"[\w.-]+(=.*)?", word):
                    break
                if "=" not in word and not word.startswith("-"):
                    found.append((text.count("\n", 0, start + m.start(1)) + 1, word))
    return found


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([^\s#:=][^:=]*?)\s*::?(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_path_named_in_the_docs_exists(doc: Path):
    missing = [
        f"{doc.relative_to(ROOT)}:{line}: {path}"
        for line, path in paths_in(doc)
        if not any(exists(p) for p in expand_braces(path))
    ]
    assert not missing, "paths named in the docs that the repository lacks:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_make_target_named_in_the_docs_exists(doc: Path):
    targets = makefile_targets()
    missing = [
        f"{doc.relative_to(ROOT)}:{line}: make {target}"
        for line, target in make_targets_in(doc)
        if target not in targets
    ]
    assert not missing, "make targets the Makefile lacks:\n" + "\n".join(missing)


def test_the_checker_finds_paths_links_and_targets():
    """The scan itself: what it reads as a path or a target, and what it leaves alone."""
    doc = ROOT / "docs" / "sample.md"
    text = (
        "See `native/server/src/handler.rs`, native/core/src/ and\n"
        "[the guide](../docs/spark.md#parameters), ![plot](bench/b1.png), [up](#top),\n"
        "https://example.com/native/x.rs, $PWD/target/release/stoker, `<dir>/tests/x`.\n"
        "To make sure, run `make test` or\n"
        "```bash\nmake demo BENCH_SCALE=full   # then make nothing\nx = a[0](docs)\n```\n"
    )
    assert paths_in(doc, text) == [
        (2, "docs/spark.md"),
        (2, "docs/bench/b1.png"),
        (1, "native/server/src/handler.rs"),
        (1, "native/core/src/"),
    ]
    assert make_targets_in(doc, text) == [(6, "demo"), (4, "test")]
    assert exists("native/server/src/handler.rs")
    assert exists("native/*/Cargo.toml")
    assert not exists("native/server/src/status.rs")
    assert exists("examples/out/quickstart_loss.png")
    assert {"demo", "test", "test-python", "example-java"} <= makefile_targets()
    assert expand_braces("native/{core,engine}/Cargo.toml") == [
        "native/core/Cargo.toml",
        "native/engine/Cargo.toml",
    ]


def test_generated_paths_are_ignored_by_git():
    """GENERATED names build outputs only, never a path that belongs in the repository."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in GENERATED:
        # A name under it: git matches directory patterns (`/target/`) on such a name
        # whether or not the build has run yet.
        probe = path.rstrip("/") + "/x"
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", probe], check=False, cwd=ROOT
        ).returncode
        assert ignored == 0, f"{path} is in GENERATED but git does not ignore it"
