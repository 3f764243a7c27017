"""Every command a result record holds reruns from the repository root: it names no scratch folder
and no absolute path, its --json lies under data/results/ (the record's own file where the command
made the record), and today's command line still accepts it (`python -m sponlib ...` through
sponlib.cli.build_parser, `benchmarks/x.py ...` through that script's build_parser).

The commands are the top-level `command`, each of tasks.json's `families.<name>.command`, the
kernel records' `runs[*].command`, comparisons.json's `part_commands[*].command` and its cells'
`made_by.commands`, and the commands scale_extrapolation_70b.json advises (parsed only: they write
no record). A record's `command_as_run`, where present, keeps the command as it was typed.
"""

import contextlib
import hashlib
import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from sponlib.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "results"
RECORDS = sorted(path.name for path in RESULTS.glob("*.json"))
SCRATCH = ("/tmp", "/root", "/home", ".tcache")
ENVIRONMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")  # CUDA_VISIBLE_DEVICES=0,1 before a command


def held_commands(record: dict) -> list[tuple[str, str, str]]:
    """(where in the record, command, what its --json must be) for every command the record holds:
    "own" for its own file, "results" for any file under data/results/, "" for none."""
    found = [("command", record["command"], "own")] if "command" in record else []
    for name, family in record.get("families", {}).items():
        found.append((f"families.{name}.command", family["command"], "own"))
    for i, run in enumerate(record.get("runs", [])):
        if isinstance(run, dict) and "command" in run:
            found.append((f"runs[{i}].command", run["command"], "own"))
    for i, part in enumerate(record.get("part_commands") or []):
        found.append((f"part_commands[{i}].command", part["command"], "results"))
    rules = record.get("rules") if record.get("kind") == "comparisons" else {}
    cells = [(f"rules.{rule}[{i}]", cell) for rule, entries in rules.items() for i, cell in enumerate(entries)]
    if record.get("kind") == "comparisons":
        cells += [(f"pruning[{i}]", cell) for i, cell in enumerate(record.get("pruning") or [])]
    for where, cell in cells:
        for i, command in enumerate((cell.get("made_by") or {}).get("commands", [])):
            found.append((f"{where}.made_by.commands[{i}]", command, "results"))
    if isinstance(record.get("commands"), list):  # advice to users (scale_extrapolation_70b.json)
        found += [(f"commands[{i}]", command, "") for i, command in enumerate(record["commands"])]
    return found


@cache
def benchmark_parser(script: str):
    """The build_parser of benchmarks/<script>, loaded by file path. The benchmarks import each other
    by name, as when run as scripts, so their folder is on the path while it loads."""
    path = ROOT / script
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
        for name in set(sys.modules) - before:  # its siblings stay out of other tests' way
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(path.parent)):
                del sys.modules[name]
    return module.build_parser


def parse_problem(words: list[str]) -> str | None:
    """Why today's command line refuses `words` (the command without its environment), or None."""
    if words[:3] == ["python", "-m", "sponlib"]:
        parser, arguments = build_parser(), words[3:]
    else:
        script = words[1] if words[:1] == ["python"] else words[0]
        if not (script.startswith("benchmarks/") and script.endswith(".py") and (ROOT / script).is_file()):
            return f"neither `python -m sponlib` nor a script of benchmarks/: {shlex.join(words)}"
        parser, arguments = benchmark_parser(script)(), words[words.index(script) + 1 :]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            parser.parse_args(arguments)
    except SystemExit:
        return f"today's command line refuses it: {said.getvalue().strip().splitlines()[-1]}"
    return None


def json_value(words: list[str]) -> str | None:
    for i, word in enumerate(words):
        if word == "--json" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--json="):
            return word.removeprefix("--json=")
    return None


def rerun_problems(record_name: str, command: str, json_rule: str) -> list[str]:
    """What keeps `command` from rerunning from the repository root, as it is in `record_name`."""
    words = shlex.split(command)
    while words and ENVIRONMENT.match(words[0]):
        words = words[1:]
    problems = [f"names a scratch folder {s!r}" for s in SCRATCH if s in command]
    values = [word.split("=", 1)[-1] for word in words]
    problems += [f"names an absolute path {v!r}" for v in values if v.startswith(("/", "~"))]
    out = json_value(words)
    own = f"data/results/{record_name}"
    if json_rule == "own" and out != own:
        problems.append(f"--json is {out!r}, not the record's own file {own!r}")
    elif json_rule == "results" and out is not None and not out.startswith("data/results/"):
        problems.append(f"--json {out!r} is not under data/results/")
    if (refused := parse_problem(words)) is not None:
        problems.append(refused)
    return problems


@pytest.mark.parametrize("record_name", RECORDS)
def test_every_command_of_the_record_reruns_from_the_repository_root(record_name):
    record = json.loads((RESULTS / record_name).read_text())
    commands = held_commands(record)
    assert commands, f"{record_name} names no command"
    problems = [
        f"{record_name} {where}: {problem}"
        for where, command, json_rule in commands
        for problem in rerun_problems(record_name, command, json_rule)
    ]
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_they_are_meant_to():
    assert rerun_problems("x.json", "python -m sponlib eval --json data/results/x.json", "own") == []
    assert rerun_problems("x.json", "python -m sponlib eval --json /tmp/x.json", "own") == [
        "names a scratch folder '/tmp'",
        "names an absolute path '/tmp/x.json'",
        "--json is '/tmp/x.json', not the record's own file 'data/results/x.json'",
    ]
    assert rerun_problems("x.json", "python -m sponlib eval --json data/results/y.json", "own") == [
        "--json is 'data/results/y.json', not the record's own file 'data/results/x.json'"
    ]
    [refused] = rerun_problems("x.json", "python -m sponlib eval --no-such-flag --json data/results/x.json", "own")
    assert refused.startswith("today's command line refuses it") and "--no-such-flag" in refused
    [refused] = rerun_problems("x.json", "benchmarks/rsparse_share.py --levels 0.5", "")
    assert "--json" in refused  # the benchmark's own parser, which requires it
    assert rerun_problems("x.json", "CUDA_VISIBLE_DEVICES=0 benchmarks/rsparse_share.py --json out.json", "") == []


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True)


def _versions_in_history(path: str) -> set[str] | None:
    """sha256 of every committed version of `path`; None without the repository's history."""
    try:
        commits = _git("log", "--format=%H", "--", path)
    except FileNotFoundError:
        return None
    if commits.returncode != 0 or _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true":
        return None
    versions = set()
    for commit in commits.stdout.decode().split():
        shown = _git("show", f"{commit}:{path}")
        if shown.returncode == 0:
            versions.add(hashlib.sha256(shown.stdout).hexdigest())
    return versions


def test_spon_recovery_artifact_hashes_name_vectors_shipped_from_that_run():
    """The teal vectors spon_recovery.json kept were shipped in data/artifacts/smollm2-135m/ until
    spon_robust.json's replaced them under the same names: each artifact hash is that of the shipped
    file, today's or (checked against the repository's history) an earlier version of it."""
    record = json.loads((RESULTS / "spon_recovery.json").read_text())
    kept = {row["name"]: row["artifact"] for row in record["experiments"] if row["artifact"]}
    levels = {row["name"] for row in record["experiments"] if row["group"] == "levels" and row["method"] == "teal"}
    assert set(kept) == levels, "the teal runs at the protocol levels keep their vectors, no other run does"
    shipped = ROOT / "data" / "artifacts" / "smollm2-135m"
    for name, artifact in kept.items():
        assert set(artifact) == {"file", "sha256"}, name
        path = shipped / artifact["file"]
        assert path.is_file(), f"{name}: no shipped {artifact['file']}"
        if hashlib.sha256(path.read_bytes()).hexdigest() == artifact["sha256"]:
            continue
        versions = _versions_in_history(path.relative_to(ROOT).as_posix())
        if versions is None:
            pytest.skip("the shipped vectors are newer than this run's; their history needs a full git checkout")
        assert artifact["sha256"] in versions, f"{name}: no version of {artifact['file']} has this hash"


def test_the_shipped_vectors_are_the_ones_the_robust_record_names():
    """Each shipped SPON file is the one the robust run kept for its chosen recipe at that level:
    same sha256, and the file's own metadata (safeguard, training) equals the record's entry."""
    from safetensors import safe_open

    record = json.loads((RESULTS / "spon_robust.json").read_text())
    kept = [e for e in record["final"] if e["recipe"] == record["choice"]["recipe"] and e["kind"] == "protocol"]
    assert kept and all(e.get("artifact") for e in kept)
    for entry in kept:
        path = ROOT / "data" / "artifacts" / "smollm2-135m" / entry["artifact"]["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["artifact"]["sha256"], path.name
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["meta"])
        assert meta["safeguard"] == entry["safeguard"], path.name
        assert meta["training"]["val_kl_best"] == entry["training"]["val_kl_best"], path.name
