"""docs/flags.md is generated from the flag definitions (`python -m ga3c.flagdoc`): a flag
added, removed or changed without regenerating it fails here."""

import re

from absl import flags

from ga3c import flagdoc
from ga3c.cli import define_eval_flags, define_flags, define_plot_flags


def doc_rows(text, heading):
    """{flag: default cell} of the tables under `## heading` (up to the next `## `)."""
    part = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `--(\w+)` \| ([^|]*) \|", part, flags=re.M))


def test_flags_page_lists_every_flag_with_its_default():
    with open(flagdoc.DOC) as f:
        text = f.read()
    for prog, define in (("ga3c-train", define_flags), ("ga3c-eval", define_eval_flags),
                         ("ga3c-plot", define_plot_flags)):
        fv = flags.FlagValues()
        define(fv)
        rows = doc_rows(text, prog)
        assert set(rows) == set(fv), (prog, set(rows) ^ set(fv))
        for name, shown in rows.items():
            default = fv[name].default
            if isinstance(default, list):
                default = ",".join(default)
            assert shown.strip().strip("`") in (str(default), "unset", "empty", "none"), name


def test_flags_page_is_what_the_generator_writes():
    with open(flagdoc.DOC) as f:
        assert f.read() == flagdoc.render(), "docs/flags.md is stale: python -m ga3c.flagdoc"


def test_check_mode_says_how_to_regenerate(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "flags.md"
    stale.write_text("# Flags\n")
    monkeypatch.setattr(flagdoc, "DOC", str(stale))
    assert flagdoc.main(["--check"]) == 1
    assert "python -m ga3c.flagdoc" in capsys.readouterr().err
    assert flagdoc.main([]) == 0 and flagdoc.main(["--check"]) == 0
