"""What `docker build .` would see, without a Docker engine: the build context as BuildKit
sends it (.dockerignore with Moby's exact rules) and the files the Dockerfile's COPY steps
put into the image before its `pip install` of the project.

The .dockerignore rules are a port of github.com/moby/patternmatcher (patternmatcher.go,
MatchesOrParentMatches, and ignorefile.ReadAll), the code BuildKit uses: patterns are
anchored at the context root (unlike .gitignore), `**` spans directories, a later `!pattern`
re-includes, and a path is excluded when it or any parent directory matches."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# ---------------------------------------------------------------------------------------------
# .dockerignore (moby/patternmatcher)
# ---------------------------------------------------------------------------------------------


def clean(path: str) -> str:
    """Go's filepath.Clean for slash paths."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    return ("/" + cleaned) if rooted else (cleaned or ".")


def read_ignore_file(text: str) -> list[str]:
    """ignorefile.ReadAll: BOM stripped, '#' lines skipped, whitespace trimmed, paths cleaned,
    a leading '/' dropped ('!' kept in front)."""
    patterns = []
    for number, line in enumerate(text.splitlines()):
        if number == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        if line:
            line = clean(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
        patterns.append(("!" if invert else "") + line)
    return patterns


class BadPattern(ValueError):
    """filepath.ErrBadPattern: the pattern does not compile (docker build refuses it too)."""


def _check_syntax(pattern: str) -> None:
    """The errors Go's filepath.Match reports for a pattern: unclosed '[', a range endpoint
    that is '-' or ']' or missing, a trailing backslash."""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= len(pattern):
                raise BadPattern(pattern)
            i += 2
            continue
        if ch == "[":
            i += 1
            if i < len(pattern) and pattern[i] == "^":
                i += 1
            first = True
            while True:
                if i >= len(pattern):
                    raise BadPattern(pattern)
                if pattern[i] == "]" and not first:
                    i += 1
                    break
                i = _class_char(pattern, i)  # lo
                if i < len(pattern) and pattern[i] == "-":
                    i = _class_char(pattern, i + 1)  # hi
                first = False
            continue
        i += 1


def _class_char(pattern: str, i: int) -> int:
    if i >= len(pattern) or pattern[i] in "-]":
        raise BadPattern(pattern)
    if pattern[i] == "\\":
        if i + 1 >= len(pattern):
            raise BadPattern(pattern)
        return i + 2
    return i + 1


@dataclass
class Pattern:
    text: str
    exclusion: bool
    dirs: int
    kind: str = "exact"  # exact | prefix | suffix | regexp
    regexp: re.Pattern[str] | None = None

    @classmethod
    def compile(cls, raw: str) -> Pattern:
        exclusion = raw.startswith("!")
        text = raw[1:] if exclusion else raw
        if exclusion and not text:
            raise BadPattern('illegal exclusion pattern: "!"')
        text = clean(text)
        _check_syntax(text)
        pattern = cls(text, exclusion, len(text.split("/")))
        pattern._compile()
        return pattern

    def _compile(self) -> None:
        """Pattern.compile, token by token: '**' spans directories, '*' and '?' stay in one."""
        regex, kind, text = "^", "exact", self.text
        pos = token = 0
        while pos < len(text):
            ch = text[pos]
            pos += 1
            if ch == "*" and text[pos : pos + 1] == "*":
                pos += 1
                if text[pos : pos + 1] == "/":
                    pos += 1
                if pos >= len(text):  # '**' at the end: everything below
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex += ".*"
                        kind = "regexp"
                else:
                    regex += "(.*/)?"
                    kind = "regexp"
                if token == 0:
                    kind = "suffix"
            elif ch == "*":
                regex += "[^/]*"
                kind = "regexp"
            elif ch == "?":
                regex += "[^/]"
                kind = "regexp"
            elif ch in ".+()|{}$":
                regex += "\\" + ch
            elif ch == "\\":
                if pos < len(text):
                    regex += "\\" + text[pos]
                    pos += 1
                    kind = "regexp"
                else:
                    regex += "\\\\"
            elif ch in "[]":
                regex += ch
                kind = "regexp"
            else:
                regex += ch
            token += 1
        if kind == "regexp":
            self.regexp = re.compile(regex + "$", re.DOTALL)
        self.kind = kind

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regexp is not None
        return self.regexp.match(path) is not None


class PatternMatcher:
    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [Pattern.compile(p.strip()) for p in patterns if p.strip()]
        self.exclusions = any(p.exclusion for p in self.patterns)

    def matches(self, file: str) -> bool:
        """MatchesOrParentMatches: excluded when a pattern matches the path or one of its
        parent directories, and no later '!' pattern re-includes it."""
        file = clean(file)
        if file == ".":
            return False
        parents = file.split("/")[:-1]
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(file)
            if not hit and parents:
                hit = any(pattern.match("/".join(parents[: i + 1])) for i in range(len(parents)))
            if hit:
                matched = not pattern.exclusion
        return matched


def context_files(root: Path) -> list[str]:
    """Every file `docker build root` sends, as context-relative slash paths."""
    ignore = root / ".dockerignore"
    matcher = PatternMatcher(read_ignore_file(ignore.read_text(encoding="utf-8")) if ignore.is_file() else [])
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        keep = []
        for name in sorted(dirnames):
            path = str(rel / name) if str(rel) != "." else name
            # An excluded folder is skipped whole unless a '!' pattern might re-include part of it.
            if not (matcher.matches(path) and not matcher.exclusions):
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = str(rel / name) if str(rel) != "." else name
            if not matcher.matches(path):
                files.append(path)
    return sorted(files)


# ---------------------------------------------------------------------------------------------
# Dockerfile: WORKDIR, COPY/ADD from the context, and the RUN that pip-installs the project
# ---------------------------------------------------------------------------------------------


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _arguments(args: str) -> list[str]:
    if args.startswith("["):
        return list(json.loads(args))
    return shlex.split(args)


@dataclass
class Image:
    """The image's files (image path -> context path) when the project is pip-installed."""

    files: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    install: list[str] = field(default_factory=list)
    """The pip arguments that install the project from a local path (e.g. ['-e', '.[diffusion]'])."""
    command: list[str] = field(default_factory=list)


def _local_install(words: list[str]) -> list[str] | None:
    """The arguments after `pip install` when they install a local path, else None."""
    for i in range(len(words) - 1):
        if words[i].endswith("pip") and words[i + 1] == "install":
            rest = words[i + 2 :]
            rest = rest[: rest.index("&&")] if "&&" in rest else rest
            # Values of -r/-c name requirement files, not projects.
            values = {
                rest[j + 1] for j, w in enumerate(rest[:-1]) if w in ("-r", "-c", "--requirement", "--constraint")
            }
            targets = [
                w for w in rest if w not in values and not w.startswith("-") and w.split("[")[0].startswith((".", "/"))
            ]
            return rest if targets else None
    return None


def simulate(dockerfile: str, context: list[str]) -> Image:
    """Follow the Dockerfile up to the RUN that pip-installs the project from a local path."""
    image = Image()
    available = set(context)
    for keyword, args in instructions(dockerfile):
        if keyword == "WORKDIR":
            image.workdir = str(PurePosixPath(image.workdir) / args)
        elif keyword in ("COPY", "ADD"):
            words = [w for w in _arguments(args) if not w.startswith("--")]
            if any(w.startswith("--from") for w in _arguments(args)):
                continue
            *sources, dest = words
            dest_dir = PurePosixPath(image.workdir) / dest
            for source in sources:
                src = clean(source)
                hits = [f for f in available if src == "." or f == src or f.startswith(src + "/")]
                if not hits:
                    raise FileNotFoundError(f"COPY {source}: not in the build context (check .dockerignore)")
                for f in hits:
                    if f == src:  # a file: into the folder dest/ or as dest
                        into = dest_dir / PurePosixPath(f).name if dest.endswith("/") or len(sources) > 1 else dest_dir
                    else:  # a folder's contents go into dest
                        into = dest_dir / (f if src == "." else f[len(src) + 1 :])
                    image.files[str(into)] = f
        elif keyword == "RUN" and not image.install:
            if (found := _local_install(shlex.split(args))) is not None:
                image.install = found
        elif keyword == "CMD":
            image.command = _arguments(args)
    return image


def materialize(image: Image, root: Path, into: Path) -> Path:
    """Write the image's files under `into`; returns the WORKDIR there."""
    for target, source in image.files.items():
        path = into / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / source, path)
    return into / image.workdir.lstrip("/")
