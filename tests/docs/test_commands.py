"""Every `maskfind` and `make` command the README and docs/ show still parses.

Shell blocks (```console, ```sh, ```bash) are read line by line; a line whose first word (after
`$ ` and `VAR=value` assignments) is `maskfind` must name existing subcommands and options, and
`<subcommand> --help` must exit 0; a line starting with `make` must name targets of the Makefile.
Nothing is run beyond `--help`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from maskfind_pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(?:console|sh|bash)\n(.*?)^```", re.S | re.M)
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def shown_commands(text: str) -> list[list[str]]:
    """The words of each `maskfind` or `make` command in the shell blocks of a page."""
    commands = []
    for block in BLOCK.findall(text):
        for line in block.splitlines():
            words = line.removeprefix("$ ").split()
            while words and ASSIGNMENT.match(words[0]):
                words = words[1:]
            if words and words[0] in ("maskfind", "make"):
                commands.append(shlex.split(" ".join(words), comments=True))
    return commands


def resolve(words: list[str]) -> tuple[list[str], click.Command]:
    """The subcommand path a `maskfind` command names, and the command it reaches."""
    command: click.Command = main
    path: list[str] = []
    for word in words[1:]:
        if not isinstance(command, click.Group) or word.startswith("-"):
            break
        sub = command.get_command(click.Context(command), word)
        where = " ".join(["maskfind", *path])
        assert sub is not None, f"`{' '.join(words)}`: no subcommand {word!r} of {where}"
        command, path = sub, [*path, word]
    return path, command


def option_problems(words: list[str], command: click.Command) -> list[str]:
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    used = {word.split("=", 1)[0] for word in words if word.startswith("--")}
    return sorted(used - known - {"--help"})


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, re.M))


COMMANDS = [(page.name, words) for page in PAGES for words in shown_commands(page.read_text())]


def test_the_docs_show_commands_of_both_kinds() -> None:
    firsts = {words[0] for _, words in COMMANDS}
    assert firsts == {"maskfind", "make"}
    assert ["make", "demo"] in [words for _, words in COMMANDS]


@pytest.mark.parametrize(
    "words", [w for _, w in COMMANDS if w[0] == "maskfind"], ids=lambda w: " ".join(w)
)
def test_each_maskfind_command_parses(words: list[str]) -> None:
    path, command = resolve(words)
    assert not option_problems(words, command), f"`{' '.join(words)}`: unknown options"
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output


def test_each_make_target_exists() -> None:
    targets = make_targets()
    for page, words in COMMANDS:
        if words[0] == "make":
            missing = [word for word in words[1:] if not word.startswith("-")]
            assert set(missing) <= targets, f"{page}: `{' '.join(words)}`"


def test_the_checks_notice_a_stale_command() -> None:
    page = "```console\n$ maskfind weights fetchh\nmake docz\nmaskfind generate --colour red\n```\n"
    (fetchh, docz, colour) = shown_commands(page)
    with pytest.raises(AssertionError, match="no subcommand 'fetchh'"):
        resolve(fetchh)
    assert "docz" not in make_targets() and "docs" in make_targets()
    assert docz == ["make", "docz"]
    assert option_problems(colour, resolve(colour)[1]) == ["--colour"]
