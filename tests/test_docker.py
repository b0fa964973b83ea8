"""What can be checked of the Dockerfile without a Docker engine (none runs here)."""

import os
import re
import shlex

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def instructions():
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", read("Dockerfile"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def pinned(requirement_name):
    """The version specifier pyproject.toml gives a dependency."""
    match = re.search(rf'"{requirement_name}([<>=!~][^"]*)"', read("pyproject.toml"))
    assert match, requirement_name
    return SpecifierSet(match.group(1))


def pip_install_target(command):
    """`pip install [options] -e TARGET` -> TARGET without extras (None if not such a command)."""
    if "pip install" not in command:
        return None
    try:
        words = shlex.split(command.strip().strip("`"))
    except ValueError:  # prose around the command
        return None
    if "pip" not in words or "install" not in words or "-e" not in words:
        return None
    target = words[words.index("-e") + 1]
    return re.sub(r"\[.*\]$", "", target)


def test_base_image_is_the_tensorflow_gpu_image_pyproject_allows():
    base = [args for word, args in instructions() if word == "FROM"]
    assert len(base) == 1
    match = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", base[0])
    assert match, f"base image {base[0]!r} is not a pinned tensorflow/tensorflow:X.Y.Z-gpu tag"
    tag = Version(match.group(1))
    spec = pinned("tensorflow")
    assert tag in spec
    # The newest minor release pyproject allows: the one a fresh install (and CI) gets.
    assert Version(f"{tag.major}.{tag.minor + 1}.0") not in spec


def test_base_image_tensorflow_is_the_one_the_tests_run_on():
    from importlib.metadata import version

    tag = re.search(r"tensorflow:(\d+\.\d+)", read("Dockerfile")).group(1)
    installed = Version(version("tensorflow"))
    assert f"{installed.major}.{installed.minor}" == tag


def test_every_copied_path_exists():
    copies = [args.split() for word, args in instructions() if word == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert os.path.exists(os.path.join(REPO, src)), src


def readme_commands():
    """The README's commands as command lines (tests/test_readme.py reads them)."""
    from tests.test_readme import README

    return [shlex.join(words) for words in README]


def test_install_step_is_the_readme_and_ci_install():
    runs = [args for word, args in instructions() if word == "RUN"]
    docker = [pip_install_target(r) for r in runs if pip_install_target(r)]
    assert docker == ["."]
    readme = [pip_install_target(c) for c in readme_commands() if pip_install_target(c)]
    ci = [pip_install_target(line) for line in read(".ci/run").splitlines()
          if pip_install_target(line)]
    assert readme and set(readme) == {"."}
    assert ci == ["."]  # CI installs the same package, with the test extra
    # and the README's first command is exactly the Dockerfile's, options aside
    assert [c for c in readme_commands() if "pip install" in c][0] == "pip install -e ."
    assert any(re.fullmatch(r"pip install( --[\w-]+)* -e \.", r) for r in runs)


@pytest.mark.parametrize("word, expected", [
    ("ENTRYPOINT", '["ga3c-train"]'),
    ("VOLUME", '["/runs"]'),
])
def test_entrypoint_and_volume(word, expected):
    assert (word, expected) in instructions()


def test_runs_as_a_non_root_user():
    users = [args for word, args in instructions() if word == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_configs_are_inside_the_image():
    assert any(word == "COPY" and args.split()[0] == "configs" for word, args in instructions())
