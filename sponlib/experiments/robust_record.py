"""Reading a robust-SPON record (data/results/spon_robust.json, written by
sponlib.experiments.robust): what an entry says on the tests, the entries of the chosen recipe,
the interpolation gaps and the summary by level. The experiment, its printout and the README
tables read the record through these alone.
"""

from __future__ import annotations

import statistics


def tested(rows: list[dict]) -> dict:
    """What an entry's rows (the validation text, then the test novel, then the held-out genres)
    say on the tests: the in-domain recovery with its interval, the least (and where) and the
    median recovery over the held-out genres, and on how many test texts SPON is worse than the mask."""
    in_domain = rows[1]
    genres = [row for row in rows[2:] if row["recovery"] is not None]  # None: the mask did no damage
    worst = min(genres, key=lambda row: row["recovery"], default=None)
    return {
        "recovery_in": in_domain["recovery"],
        "recovery_in_interval": [in_domain["recovery_low"], in_domain["recovery_high"]],
        "recovery_heldout_min": None if worst is None else worst["recovery"],
        "recovery_heldout_median": statistics.median(row["recovery"] for row in genres) if genres else None,
        "worst_heldout": None if worst is None else worst["text"],
        "worse_than_mask": sum(row["worse_than_mask"] for row in rows[1:]),
    }


def chosen_entries(record: dict, part: str) -> list[dict]:
    """The entries of `part` ("final" or "interpolation") made with the chosen recipe, by level: a
    record keeps those of an earlier winner too."""
    chosen = record.get("choice", {}).get("recipe")
    return sorted((e for e in record.get(part, []) if e["recipe"] == chosen), key=lambda e: e["level"])


def interpolation_gaps(entry: dict) -> list[float]:
    """|recovery interpolated − recovery trained| on each text of an interpolation entry where
    both are defined (None: the mask did no damage there)."""
    return [
        abs(row["recovery"] - row["recovery_trained"])
        for row in entry["rows"]
        if row["recovery"] is not None and row["recovery_trained"] is not None
    ]


def robust_summary(record: dict, device: str | None = None) -> dict:
    """Per level of the final recipe: what its tests say (`tested`), γ and the device."""
    entries = chosen_entries(record, "final")
    return {
        f"{entry['level']:g}": {
            "recipe": entry["recipe"],
            **tested(entry["rows"]),
            "gamma": entry["safeguard"]["gamma"],
            "device": device,
        }
        for entry in entries
    }
