"""Every command in the README (and in the docs pages) is one the code still takes.

Each line of a fenced command block (a fence without a language, or `sh`) is split at `&&`
and checked by its program: `ga3c-train` lines parse into a valid config (flagfiles found,
values in range); `ga3c-eval` and `ga3c-plot` flags exist; benchmark scripts exist and take
their flags; `pip install` extras exist; a program nobody checks fails the test. The cheap
ones run for real: `ga3c-train --help`, the README's `ga3c-eval` and `ga3c-plot` on the
session's tiny run, `benchmarks/learning_table.py` on a kept run, and the Python block.
CI (`.ci/run`) runs the quick start itself. Blocks of output or pictures are fenced `text`.
"""

import contextlib
import glob
import io
import os
import re
import shlex
import subprocess
import sys

import pytest

from ga3c.cli import (define_eval_flags, define_flags, define_plot_flags, eval_main, main,
                      parse_config, parse_flags, plot_main)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, REPO)
                              for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]


def read(name):
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def fenced(text, languages=("", "sh")):
    """The contents of the fenced blocks whose language is one of `languages`."""
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)
            if lang in languages]


def commands(page):
    """Each command of a page's command blocks as a word list (continuations joined, comments
    and `&&` split off)."""
    out = []
    for block in fenced(read(page)):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                out.append(words[:cut])
                words = words[cut + 1:]
    return out


ALL = [(page, words) for page in PAGES for words in commands(page)]
README = [words for page, words in ALL if page == "README.md"]


def flag_names(args):
    return [a[2:].split("=", 1)[0] for a in args if a.startswith("--")]


def train_flags():
    from absl import flags

    fv = flags.FlagValues()
    define_flags(fv)
    return set(fv) | {f"no{name}" for name in fv} | {"flagfile"}


def script_options(path):
    """The `--options` a benchmark script's argparse defines."""
    return set(re.findall(r'add_argument\(\s*"--([\w-]+)"', read(path)))


def pyproject_section(name):
    """The lines of one `[name]` table of pyproject.toml (no tomllib: Python 3.10 has none)."""
    text = read("pyproject.toml")
    return text.split(f"\n[{name}]\n", 1)[1].split("\n[", 1)[0]


def extras():
    return set(re.findall(r"^([\w-]+) = \[", pyproject_section("project.optional-dependencies"),
                          flags=re.M))


def markers():
    return set(re.findall(r'"(\w+): ', pyproject_section("tool.pytest.ini_options")))


def check_pip(words):
    assert words[:2] == ["pip", "install"] and "-e" in words, words
    target = words[words.index("-e") + 1]
    match = re.fullmatch(r"\.(?:\[([\w,]+)\])?", target)
    assert match, f"installs {target!r}, not this checkout"
    for extra in filter(None, (match.group(1) or "").split(",")):
        assert extra in extras(), f"no [{extra}] extra in pyproject.toml"


def check_python(words):
    if words[1:3] == ["-m", "pytest"]:
        if "-m" in words[3:]:
            marker = words[words.index("-m", 3) + 1]
            assert set(re.findall(r"\w+", marker)) - {"and", "or", "not"} <= markers(), marker
        return
    script = words[1]
    assert script.startswith("benchmarks/") and os.path.isfile(os.path.join(REPO, script)), words
    own = script_options(script)
    passes_through = script in ("benchmarks/throughput.py", "benchmarks/cartpole_solve.py")
    known = own | (train_flags() if passes_through else set())
    unknown = [f for f in flag_names(words[2:]) if f not in known]
    assert not unknown, (script, unknown)
    for arg in words[2:]:
        if arg.startswith("--sweep="):  # name=v1,v2 or a/b=a1/b1,...: each name a flag
            names = arg.split("=", 2)[1].split("/")
            assert set(names) <= train_flags(), arg
        if arg.startswith("--logdir="):
            assert os.path.isdir(os.path.join(REPO, arg.split("=", 1)[1])), arg


def check_train(args):
    if args == ["--help"]:
        return
    parse_config(args)  # flagfile found, flags known, every value valid


def check_ga3c(words):
    prog, args = words[0], words[1:]
    if prog == "ga3c-train":
        check_train(args)
    else:
        define = define_eval_flags if prog == "ga3c-eval" else define_plot_flags
        parse_flags(define, args, prog)


def check_docker(words):
    if words[1] == "build":
        assert os.path.isfile(os.path.join(REPO, "Dockerfile"))
        return
    assert words[1] == "run", words
    # everything after the image name goes to the image's entry point, ga3c-train
    image = words.index("ga3c", 2)
    check_train(words[image + 1:])


CHECKS = {
    "pip": check_pip,
    "python": check_python,
    "ga3c-train": check_ga3c,
    "ga3c-eval": check_ga3c,
    "ga3c-plot": check_ga3c,
    "docker": check_docker,
    "tensorboard": lambda words: __import__("tensorboard"),  # installed with ga3c
    "bash": lambda words: os.path.isfile(os.path.join(REPO, words[1])) or pytest.fail(words),
}


@pytest.mark.parametrize("page, words", ALL, ids=[f"{p}:{' '.join(w)[:60]}" for p, w in ALL])
def test_every_command_of_the_docs_is_one_the_code_takes(page, words, monkeypatch):
    monkeypatch.chdir(REPO)  # the commands run from the checkout: configs/... is relative
    assert words[0] in CHECKS, f"{page}: nothing checks {words[0]!r}: add it to CHECKS"
    CHECKS[words[0]](words)


def test_the_readme_starts_with_the_install_and_test_commands():
    assert README[:2] == [["pip", "install", "-e", "."],
                          ["ga3c-train", "--flagfile=configs/cartpole.cfg"]]
    assert README[2:4] == [["pip", "install", "-e", ".[test]"], ["python", "-m", "pytest"]]


def test_every_ga3c_program_appears_in_the_readme():
    from importlib.metadata import entry_points

    shipped = {e.name for e in entry_points(group="console_scripts")
               if e.value.startswith("ga3c.")}
    assert shipped == {words[0] for words in README if words[0].startswith("ga3c-")}


def run_quietly(entry, args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = entry(args)
    return code, out.getvalue(), err.getvalue()


def readme_command(prog, needle=""):
    return next(w[1:] for w in README if w[0] == prog and needle in " ".join(w))


def test_readme_help_runs():
    code, out, _ = run_quietly(main, readme_command("ga3c-train", "--help"))
    assert code == 0 and "--num_agents" in out


def test_readme_eval_and_plot_run_on_a_finished_run(trained_run, tmp_path):
    logdir, _ = trained_run
    args = [f"--logdir={logdir}" if a.startswith("--logdir=") else a
            for a in readme_command("ga3c-eval")]
    code, out, err = run_quietly(eval_main, [*args, f"--json={tmp_path / 'eval.json'}"])
    assert code == 0, err
    assert "mean" in out and (tmp_path / "eval.json").is_file()
    args = [f"--logdir={logdir}" if a.startswith("--logdir=") else
            f"--out={tmp_path / 'curve.png'}" if a.startswith("--out=") else a
            for a in readme_command("ga3c-plot")]
    code, _, err = run_quietly(plot_main, args)
    assert code == 0, err
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_readme_python_block_runs(tmp_path, monkeypatch):
    """The README's Python, verbatim, on a shrunk run (a few thousand CartPole steps)."""
    import numpy as np

    import ga3c

    (block,) = fenced(read("README.md"), ("python",))
    train = ga3c.train

    def shrunk(config, *a, **kw):
        return train(config.replace(run__max_env_steps=1500, env__envs_per_agent=4,
                                    pipeline__max_predict_batch=8,
                                    pipeline__min_train_batch=16, network__hidden=(16,),
                                    run__log_every_seconds=60.0), *a, **kw)

    monkeypatch.setattr(ga3c, "train", shrunk)
    monkeypatch.chdir(tmp_path)  # its runs/nb lands here
    scope = {"observations": np.zeros((3, 4), np.float32)}
    exec(block, scope)
    assert scope["result"].ok and scope["actions"].shape == (3,)


def learning_tables(page):
    """(run, every, table rows) for each learning table a page says it made with
    benchmarks/learning_table.py from a run kept in results/."""
    text = read(page)
    out = []
    for m in re.finditer(r"learning_table\.py --logdir=(results/\w+) --every=(\d+)", text):
        rows = re.search(r"^(\|.*\|\n)+", text[m.end():], flags=re.M)
        out.append((m.group(1), m.group(2), rows.group(0).splitlines()))
    return out


@pytest.mark.parametrize("run, every, rows", learning_tables("docs/results.md"))
def test_results_tables_are_what_the_kept_runs_give(run, every, rows):
    proc = subprocess.run([sys.executable, "benchmarks/learning_table.py", f"--logdir={run}",
                           f"--every={every}"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    assert [row for row in rows if row.replace("**", "") not in printed] == []  # bold aside


def slug(heading):
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page):
    return {slug(h) for h in re.findall(r"^#+ (.*)$", read(page), flags=re.M)}


@pytest.mark.parametrize("page", PAGES)
def test_links_between_pages_resolve(page):
    """Every relative link of a page names a file that exists, and an anchor its page has."""
    text = re.sub(r"^```.*?^```", "", read(page), flags=re.M | re.S)
    base = os.path.dirname(page)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(base, path)) if path else page
        assert os.path.exists(os.path.join(REPO, path)), (page, target)
        if anchor:
            assert anchor in anchors(path), (page, target)
