"""Cells of an earlier comparisons record that a new one keeps.

The comparisons record is a table of cells (a rule at a level, a pruned model) that take minutes
of GPU time each. When a run makes only some cells (new levels, a rule added), the record it
writes keeps the others from the record already at its path, provided that record was made
under the same settings: model, dtype, texts, calibration, recipe, training, and for larosa the
same rotations (by digest). A cell the work folders hold replaces the earlier one. Every cell
says how it was made (`made_by`: the commands, and for a carried cell the date, device and
versions of the run that made it), so a record assembled over several runs stays rerunnable.
"""

from __future__ import annotations

import json
import shlex

# Settings that may differ between the runs whose cells one record holds: which levels each run
# made, and the rotations (compared on their own, for larosa's cells alone).
PER_RUN_SETTINGS = ("levels", "rotations")


def refusal(earlier: dict, settings: dict, provenance: dict) -> str | None:
    """Why the cells of `earlier` cannot join a record made under `settings` by a run whose
    provenance (model, dtype) is given, or None when they can."""
    if earlier.get("kind") != "comparisons":
        return f"it is a {earlier.get('kind')!r} record, not a comparisons record"
    for key in ("model", "dtype"):
        if earlier.get(key) != provenance.get(key):
            return f"its {key} differs ({earlier.get(key)} against {provenance.get(key)})"
    mine, theirs = _comparable(settings), _comparable(earlier.get("settings", {}))
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    return f"its settings differ in {', '.join(differ)}" if differ else None


def carry_rules(earlier: dict, rules: dict, settings: dict) -> list[str]:
    """Add to `rules` (rule -> entries made now) the earlier record's entries at levels not made
    now; larosa's only when the rotations are the same. Returns the cells carried, as 'rule level'."""
    carried = []
    for rule, entries in rules.items():
        if rule == "larosa" and not same_rotations(earlier, settings):
            continue
        made = {e["level"] for e in entries}
        for entry in earlier.get("rules", {}).get(rule, []):
            if entry["level"] not in made:
                entries.append(entry | {"made_by": made_by(earlier, entry, rule)})
                carried.append(f"{rule} {entry['level']:g}")
        entries.sort(key=lambda e: e["level"])
    return carried


def rotations_left_out(earlier: dict, rules: dict, settings: dict) -> str | None:
    """What of the earlier record's larosa cells a record made under `settings` cannot keep, and
    why, or None when it keeps them all. The rotations' digest follows float rounding, so a rerun
    on another machine (or GPU) makes other rotations, and every larosa level must be remade there."""
    if same_rotations(earlier, settings):
        return None
    made = {e["level"] for e in rules.get("larosa", [])}
    lost = [e["level"] for e in earlier.get("rules", {}).get("larosa", []) if e["level"] not in made]
    if not lost:
        return None
    digests = [(_rotation_digest(s) or "none")[:12] for s in (earlier["settings"], settings)]
    levels = ",".join(f"{level:g}" for level in lost)
    return (
        f"larosa {levels}: made with other rotations (sha256 {digests[0]}…, these {digests[1]}…); "
        f"remake them with --parts larosa --levels {levels} on this machine, into this work folder"
    )


def carry_pruning(earlier: dict, pruning: list[dict]) -> list[str]:
    """The earlier record's pruned models that were not made now, added to `pruning`."""
    made = {(e["method"], e["pattern"]) for e in pruning}
    carried = []
    for entry in earlier.get("pruning", []):
        if (entry["method"], entry["pattern"]) not in made:
            pruning.append(entry | {"made_by": made_by(earlier, entry, "pruning")})
            carried.append(f"{entry['method']} {entry['pattern']}")
    return carried


def made_by(earlier: dict, entry: dict, part: str) -> dict:
    """How a carried cell was made: its own `made_by` if it has one, else (records written before
    cells carried one) the earlier record's command with `--parts` naming the cell's part, which
    is the command that made it; with the date, device and versions of the earlier run."""
    known = dict(entry.get("made_by", {}))
    if "commands" not in known:
        known["commands"] = [_with_parts(earlier.get("command", ""), part)]
    known.setdefault("record_created", earlier.get("created"))
    known.setdefault("device", (earlier.get("device") or {}).get("name"))
    known.setdefault("versions", earlier.get("versions"))
    return known


def where_made(rules: dict, pruning: list[dict], earlier: dict | None) -> tuple[dict, dict] | None:
    """(device, versions) every cell that names them was made with (the earlier record's
    description of the device when that names the same), or None when cells differ or none says."""
    made = [e["made_by"] for entries in rules.values() for e in entries] + [e["made_by"] for e in pruning]
    names = {m.get("device") for m in made} - {None}
    versions = {json.dumps(m["versions"], sort_keys=True) for m in made if m.get("versions")}
    if len(names) != 1 or len(versions) != 1:
        return None
    name = names.pop()
    known = (earlier or {}).get("device") or {}
    return (known if known.get("name") == name else {"name": name}), json.loads(versions.pop())


def part_commands(earlier: dict | None, now: list[dict]) -> list[dict]:
    """The commands that made the parts: the earlier record's, then this run's, each once."""
    out = []
    for entry in [*((earlier or {}).get("part_commands") or []), *now]:
        if entry not in out:
            out.append(entry)
    return out


def _comparable(settings: dict) -> dict:
    plain = json.loads(json.dumps(settings))  # tuples and lists compare alike
    return {k: v for k, v in plain.items() if k not in PER_RUN_SETTINGS}


def same_rotations(earlier: dict, settings: dict) -> bool:
    """Whether larosa's cells of `earlier` were made with the rotations of `settings` (by digest)."""
    digest = _rotation_digest(earlier.get("settings", {}))
    return digest is not None and digest == _rotation_digest(settings)


def _rotation_digest(settings: dict) -> str | None:
    return (settings.get("rotations") or {}).get("sha256")


def _with_parts(command: str, part: str) -> str:
    words = shlex.split(command)
    if "--parts" in words and words.index("--parts") + 1 < len(words):
        words[words.index("--parts") + 1] = part
    return shlex.join(words)
