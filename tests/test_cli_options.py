"""The command line's options, without running a command: every option says what it does, the
options with a fixed set of values list or check it, the old spellings still parse as the new
ones, and every command line stored in a record of data/results/ still parses."""

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from sponlib.cli import build_parser

RESULTS = Path(__file__).resolve().parents[1] / "data" / "results"

# Options whose values form a fixed set: (command, option). Each has `choices`, or a type that
# checks its value and whose error names the allowed ones.
ENUMERATED = [
    *[(command, "--method") for command in ("eval", "train", "analyze", "generalize", "tasks", "harness")],
    ("sweep", "--methods"),
    *[(command, "--dtype") for command in ("calibrate", "eval", "train", "export", "sweep", "tasks", "robust")],
    ("prepare", "--model"),
    *[(command, "--precision") for command in ("train", "recovery", "robust")],
    *[(command, "--roles") for command in ("train", "recovery")],
    ("recovery", "--only"),
    ("robust", "--recipes"),
    ("robust", "--stop-after"),
    ("comparisons", "--parts"),
]

# The same command line in two spellings: (canonical, alias).
ALIASES = [
    (["analyze", "--json", "a.json"], ["analyse", "--json", "a.json"]),
    (["generalize", "--json", "g.json"], ["generalise", "--json", "g.json"]),
    (
        ["sweep", "--methods", "teal", "--calibration", "c", "--json", "s.json"],
        ["sweep", "--method", "teal", "--calibration", "c", "--json", "s.json"],
    ),
]


def sub_parsers() -> dict[str, argparse.ArgumentParser]:
    """Command name -> its parser, once per parser (aliases left out)."""
    parser = build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = {}
    for name, sub in action.choices.items():
        if sub not in commands.values():
            commands[name] = sub
    return commands


def option(command: str, flag: str) -> argparse.Action:
    [action] = [a for a in sub_parsers()[command]._actions if flag in a.option_strings]
    return action


def test_every_option_of_every_command_says_what_it_does():
    missing = [
        f"{command} {action.option_strings[0]}"
        for command, sub in sub_parsers().items()
        for action in sub._actions
        if action.option_strings and action.option_strings[0] != "-h" and not (action.help or "").strip()
    ]
    assert not missing, f"options without help: {', '.join(missing)}"


@pytest.mark.parametrize("command, flag", ENUMERATED)
def test_options_with_a_fixed_set_of_values_list_or_check_it(command, flag):
    action = option(command, flag)
    if action.choices:
        return
    assert action.type is not None, f"{command} {flag}: neither choices nor a checking type"
    with pytest.raises(argparse.ArgumentTypeError) as error:
        action.type("no-such-value")
    # A checking type carries its set as `.allowed`; the dtype names are load_model's own, in its error.
    allowed = ("float32", "bfloat16", "float16") if flag == "--dtype" else action.type.allowed
    for value in allowed:
        assert value in str(error.value), f"{command} {flag}: the error does not name {value!r}"
        action.type(value)  # ... and every value it names is taken


def test_comma_lists_name_the_bad_item_and_refuse_an_empty_list():
    methods = option("sweep", "--methods").type
    assert methods("teal,greedy-wina") == ["teal", "greedy-wina"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown mask rule 'topk'; choose from teal, wina"):
        methods("teal,topk")
    with pytest.raises(argparse.ArgumentTypeError, match="at least one"):
        methods(",")


def test_bad_values_are_argparse_errors(capsys):
    for argv in (
        ["sweep", "--methods", "teal,topk", "--calibration", "c", "--json", "s.json"],
        ["train", "--sparsity", "0.5", "--out", "s", "--precision", "fp8"],
        ["eval", "--dtype", "float8"],
    ):
        with pytest.raises(SystemExit) as exit:
            build_parser().parse_args(argv)
        assert exit.value.code == 2
    assert "use one of float32" in capsys.readouterr().err


@pytest.mark.parametrize("canonical, alias", ALIASES)
def test_old_spellings_parse_as_the_canonical_ones(canonical, alias):
    assert vars(build_parser().parse_args(alias)) == vars(build_parser().parse_args(canonical))


def test_tasks_must_name_its_record(capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["tasks", "--device", "cuda"])
    assert exit.value.code == 2
    assert "the following arguments are required: --json" in capsys.readouterr().err


COMMAND_LINE = re.compile(r"^(\w+=\S*\s+)*python -m sponlib\s")  # after environment settings, if any


def stored_commands() -> list[tuple[str, str]]:
    """(record, command) for every `python -m sponlib` command line kept in data/results/, under any
    key that names a command: a record's `command` (and `command_as_run`), those of its parts
    (tasks.json's families, comparisons' part_commands), and `commands` lists. Prose is skipped:
    a command line starts with `python -m sponlib`, after environment settings (CUDA_VISIBLE_DEVICES=0)."""
    found = []

    def walk(node, record, commands=False):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, record, commands or "command" in key)
        elif isinstance(node, list):
            for value in node:
                walk(value, record, commands)
        elif commands and isinstance(node, str) and COMMAND_LINE.match(node):
            found.append((record, node))

    for path in sorted(RESULTS.glob("*.json")):
        walk(json.loads(path.read_text()), path.name)
    return found


def test_some_stored_commands_are_found():
    records = {record for record, _ in stored_commands()}
    assert {"tasks.json", "comparisons.json", "spon_robust.json", "analysis_smollm2.json"} <= records


@pytest.mark.parametrize("record, command", stored_commands())
def test_every_stored_command_still_parses(record, command):
    words = shlex.split(command)
    start = next(i for i in range(len(words) - 2) if words[i : i + 3] == ["python", "-m", "sponlib"])
    args = build_parser().parse_args(words[start + 3 :])  # only that it parses: paths are not checked
    assert callable(args.run), f"{record}: {command}"
