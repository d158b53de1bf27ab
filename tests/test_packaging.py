"""The image builds and the compose file is valid, checked without a Docker engine.

The Docker build context is computed with Moby's .dockerignore rules (tests/docker_context.py),
the Dockerfile's COPY steps are replayed into a temporary folder, and the Dockerfile's own
`pip install` of the project runs there (no dependencies: they are in this venv); then every
package pyproject.toml declares imports from that copy, and the image's command exists.
docker-compose.yml is validated against the Compose specification schema (vendored, with its
licence, by check-jsonschema) plus the cross-references the schema cannot see."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from docker_context import BadPattern, PatternMatcher, context_files, materialize, read_ignore_file, simulate

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = PYPROJECT["tool"]["setuptools"]["packages"]


# ---- .dockerignore semantics: Moby's own test table (patternmatcher_test.go) -------------


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        ("**", "file", True),
        ("**", "dir/file", True),
        ("**/", "dir/file", True),
        ("**/**", "dir/file", True),
        ("dir/**", "dir/file", True),
        ("dir/**", "dir/dir2/file", True),
        ("**/dir", "dir", True),
        ("**/dir", "dir/file", True),
        ("**/dir2/*", "dir/dir2/file", True),
        ("**/dir2/**", "dir/dir2/dir3/file", True),
        ("**file", "file", True),
        ("**file", "dir/dir/file", True),
        ("**/file*.txt", "dir/dir/file.txt", True),
        ("**/**/*.txt2", "dir/dir/file.txt", False),
        ("**/*.txt", "file.txt", True),
        ("a**/*.txt", "a/dir/dir/file.txt", True),
        ("a/*.txt", "a/dir/file.txt", False),
        ("a/*.txt", "a/file.txt", True),
        ("a[b-d]e", "ace", True),
        ("a[b-d]e", "aae", False),
        ("a[^b-d]e", "aze", True),
        (".*", ".foo", True),
        (".*", "foo", False),
        ("abc.def", "abcdef", False),
        ("abc?def", "abcZdef", True),
        ("**/foo/bar", "dir/dir2/foo/bar", True),
        ("abc/**", "abc", False),
        ("abc/**", "abc/def/ghi", True),
        ("**/.foo", "bar.foo", False),
        ("a(b)c/def", "a(b)c/def", True),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
        ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "ab", False),
        ("a*/b", "a/c/b", False),
        ("a*b", "a/b", False),
        # Unlike .gitignore, a bare name is anchored at the context root.
        ("foo", "sub/foo", False),
        ("__pycache__", "pkg/__pycache__/x.pyc", False),
        ("**/__pycache__", "pkg/__pycache__/x.pyc", True),
    ],
)
def test_pattern_matches_like_moby(pattern, path, excluded):
    assert PatternMatcher([pattern]).matches(path) is excluded


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["**", "!util/docker/web"], "util/docker/web/foo", False),
        (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
        (["docs", "!docs/README.md"], "docs/README.md", False),
        (["docs/*", "!docs/README.md"], "docs/README.md", False),
        (["*.go", "!fileutils.go"], "fileutils.go", False),
        (["!fileutils.go", "*.go"], "fileutils.go", True),
    ],
)
def test_exceptions_apply_in_order(patterns, path, excluded):
    assert PatternMatcher(patterns).matches(path) is excluded


@pytest.mark.parametrize("pattern", ["[", "[^", "a[", "[]a]", "[-]", "[x-]", "[a-b-c]", "\\", "!"])
def test_malformed_patterns_are_refused(pattern):
    with pytest.raises(BadPattern):
        PatternMatcher([pattern])


def test_ignore_file_lines_are_read_like_buildkit():
    text = "\ufefftest1\n/test2\n/a/file/here\n\nlastfile\n# a comment\n! /inverted/abs/path\n  spaced/./x/../y  \n"
    assert read_ignore_file(text) == ["test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path", "spaced/y"]


# ---- the build context and the image ------------------------------------------------------


def test_build_context_holds_the_project_and_none_of_the_junk():
    files = context_files(ROOT)
    print(f"\ncontext: {len(files)} files, {sum((ROOT / f).stat().st_size for f in files) / 1e6:.2f} MB")
    for package in PACKAGES:
        assert f"{package.replace('.', '/')}/__init__.py" in files, f"package {package} is not in the build context"
    for needed in ("pyproject.toml", "README.md", "Dockerfile", "static/index.html"):
        assert needed in files
    junk = [
        f
        for f in files
        if re.search(r"(^|/)(\.git|\.venv|__pycache__|\.mypy_cache|\.ruff_cache|\.pytest_cache|test-artifacts)(/|$)", f)
        or ".egg-info/" in f
    ]
    assert not junk, f"the build context carries {junk[:5]}"


def test_dockerignore_keeps_out_secrets_and_local_state_wherever_they_appear():
    matcher = PatternMatcher(read_ignore_file((ROOT / ".dockerignore").read_text()))
    for path in (
        ".env",  # LIVESTYLE_AUTH_TOKEN and TURN_SECRET (README, Remote GPU)
        ".git/HEAD",
        ".venv/bin/python",
        "pipeline/__pycache__/core.cpython-311.pyc",
        "livestyle.egg-info/PKG-INFO",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v",
        "test-artifacts/browser.png",
    ):
        assert matcher.matches(path), f"{path} would be sent to the Docker build (and COPY . . puts it in the image)"
    for path in ("pyproject.toml", "server/app.py", "static/index.html", "bench/harness.py"):
        assert not matcher.matches(path)


def install_like_the_image(root: Path, dockerfile: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Replay the Dockerfile's COPY steps from the build context of `root` into tmp_path/image,
    then run its `pip install` of the project there into tmp_path/site (no dependencies)."""
    image = simulate(dockerfile, context_files(root))
    assert image.install, "the Dockerfile has no RUN that pip-installs the project from the context"
    workdir = materialize(image, root, tmp_path / "image")
    site = tmp_path / "site"
    args = [a for a in image.install if a not in ("--no-cache-dir", "-q", "--quiet")]
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    # --target: a throwaway location; pip never touches this venv's own installation.
    done = subprocess.run(
        [*command, "--target", str(site), *args], cwd=workdir, capture_output=True, text=True, timeout=240
    )
    return done, site


def test_the_image_installs_and_imports_every_package(tmp_path):
    dockerfile = (ROOT / "Dockerfile").read_text()
    t0 = time.monotonic()
    done, site = install_like_the_image(ROOT, dockerfile, tmp_path)
    print(f"\ninstall from the simulated image: {time.monotonic() - t0:.1f} s, exit {done.returncode}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # setuptools' deprecation notices (the licence table printed 54 lines of them) must not come back;
    # its one-paragraph "Editable installation" note is information, and `pip -q` hides it.
    output = (done.stdout + done.stderr).splitlines()
    deprecations = [line.strip() for line in output if "deprecat" in line.lower()]
    print(f"install output: {len(output)} lines, {len(deprecations)} about deprecations")
    assert not deprecations, f"setuptools warned while installing: {deprecations[:5]}"
    command = simulate(dockerfile, context_files(ROOT)).command
    script = PYPROJECT["project"]["scripts"]
    assert command and command[0] in script, f"CMD {command} is not one of the installed commands {list(script)}"
    assert (site / "bin" / command[0]).is_file()
    workdir = tmp_path / "image" / simulate(dockerfile, context_files(ROOT)).workdir.lstrip("/")
    # -S: without this venv's site-packages at start, so its own editable livestyle cannot win;
    # the dependencies are added after the image's copy.
    check = (
        "import importlib, site, sys, json;"
        f"site.addsitedir({str(site)!r});"
        f"site.addsitedir({site_packages()!r});"
        f"mods = {{p: importlib.import_module(p).__file__ for p in {PACKAGES!r}}};"
        "import server.app;"
        "print(json.dumps({'modules': mods, 'static': str(server.app.STATIC_DIR)}))"
    )
    imported = subprocess.run(
        [sys.executable, "-S", "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    result = __import__("json").loads(imported.stdout.strip().splitlines()[-1])
    for package, file in result["modules"].items():
        assert Path(file).is_relative_to(workdir), f"{package} imported from {file}, not from the image's copy"
    assert (Path(result["static"]) / "index.html").is_file(), "the page is missing from the image"


def site_packages() -> str:
    return next(p for p in sys.path if p.endswith("site-packages"))


def test_the_check_catches_a_package_the_dockerfile_forgets(tmp_path):
    """The bug this check exists for: pyproject lists `bench`, a COPY list without it."""
    dockerfile = (
        "FROM python:3.11-slim-bookworm\nWORKDIR /app\nCOPY pyproject.toml README.md ./\n"
        + "".join(f"COPY {p} {p}\n" for p in ("server", "signaling", "pipeline", "static"))
        + 'RUN pip install -e ".[diffusion,speed]"\nCMD ["livestyle", "serve"]\n'
    )
    done, _ = install_like_the_image(ROOT, dockerfile, tmp_path)
    assert done.returncode != 0
    assert "bench" in done.stdout + done.stderr


# ---- docker-compose.yml ---------------------------------------------------------------------


def validate_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_matches_the_compose_specification():
    done = validate_compose(ROOT / "docker-compose.yml")
    print(f"\ncompose: {done.stdout.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_validation_catches_a_typo(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("environment:", "enviroment:", 1))
    done = validate_compose(broken)
    assert done.returncode != 0 and "enviroment" in done.stdout


def test_compose_file_refers_to_what_exists():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    config_source = (ROOT / "server" / "config.py").read_text()
    known = set(re.findall(r"LIVESTYLE_[A-Z_]+", config_source))
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        if "build" in service:
            context = ROOT / (service["build"] if isinstance(service["build"], str) else service["build"]["context"])
            assert (context / "Dockerfile").is_file()
        unknown = {k for k in service.get("environment", {}) if k.startswith("LIVESTYLE_")} - known
        assert not unknown, f"{name}: livestyle reads no {sorted(unknown)}"
    livestyle = compose["services"]["livestyle"]
    port = livestyle["environment"]["LIVESTYLE_PORT"]
    assert f":{port}/healthz" in " ".join(livestyle["healthcheck"]["test"])
