"""The one-line form of an exception shown to users."""

from ga3c.errors import first_line


def test_first_line_of_a_message():
    assert first_line(ValueError("\n  bad value\nmore detail")) == "bad value"
    assert first_line(ValueError("bad value\nmore detail")) == "bad value"


def test_empty_message_gives_the_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("\n\n")) == "RuntimeError"


def test_long_lines_are_cut():
    assert first_line(ValueError("x" * 1000), limit=10) == "x" * 10
