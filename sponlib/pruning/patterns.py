"""Sparsity patterns of weight pruning, and the per-row choice of which weights go.

A pattern is either a float s in [0, 1), unstructured: each output row loses floor(s · in) of its
weights; or a pair (N, M), semi-structured N:M: in each group of M consecutive input columns of a
row, N weights are zeroed (2:4 is what sparse tensor cores run).
"""

from __future__ import annotations

import math
import re

import torch

from ..errors import InvalidArgumentError

Pattern = float | tuple[int, int]


def parse_pattern(text: str | float | tuple[int, int]) -> Pattern:
    """ "0.5" or "50%" -> 0.5 (unstructured); "2:4" -> (2, 4) (N:M). A float or an (N, M) pair is
    checked and returned as is."""
    if isinstance(text, tuple):
        return _check_nm(*text, text)
    if isinstance(text, str):
        spec = text.strip()
        match = re.fullmatch(r"(\d+)\s*:\s*(\d+)", spec)
        if match:
            return _check_nm(int(match[1]), int(match[2]), text)
        try:
            value = float(spec[:-1]) / 100 if spec.endswith("%") else float(spec)
        except ValueError:
            raise InvalidArgumentError(
                f"pruning pattern {text!r} is neither a share (e.g. 0.5 or 50%) nor N:M (e.g. 2:4)"
            ) from None
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        raise InvalidArgumentError(f"pruning pattern must be a share (0.5, '50%') or 'N:M' ('2:4'); got {text!r}")
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise InvalidArgumentError(
            f"unstructured sparsity must be in [0, 1), the share of each row's weights zeroed; got {text!r} "
            "(1 would zero every weight; use e.g. 0.5 or '50%' for half)"
        )
    return value


def _check_nm(n, m, text) -> tuple[int, int]:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise InvalidArgumentError(
            f"N:M pattern {text!r} must have integers 0 < N < M (N weights zeroed in every M); e.g. '2:4'"
        )
    return n, m


def format_pattern(pattern: Pattern) -> str:
    """0.5 -> '50%', (2, 4) -> '2:4'."""
    return f"{pattern[0]}:{pattern[1]}" if isinstance(pattern, tuple) else f"{100 * pattern:g}%"


def check_fits(pattern: Pattern, in_features: int, name: str = "layer") -> None:
    """An N:M pattern needs M to divide the number of input columns."""
    if isinstance(pattern, tuple) and in_features % pattern[1]:
        raise InvalidArgumentError(
            f"{format_pattern(pattern)} pruning needs in_features divisible by {pattern[1]}, but {name} has "
            f"{in_features}; choose an M that divides it, or an unstructured share"
        )


def pruned_count(sparsity: float, columns: int) -> int:
    """How many of `columns` weights a share `sparsity` zeroes: floor, forgiving float rounding
    (0.29 · 100 is 28.999... in binary)."""
    return math.floor(sparsity * columns + 1e-9)


def drop_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep mask with False at the `count` lowest scores of each row. (rows, cols) -> (rows, cols)"""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count > 0:
        keep.scatter_(1, scores.topk(count, dim=1, largest=False).indices, False)
    return keep


def keep_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Keep mask of a layer from its weights' scores (lowest go first), per row. (out, in) -> (out, in)"""
    rows, columns = scores.shape
    if isinstance(pattern, tuple):
        n, m = pattern
        check_fits(pattern, columns)
        # (out, in) -> (out · in/M, M): each row of the view is one group of M consecutive columns
        return drop_lowest(scores.reshape(-1, m), n).reshape(rows, columns)
    return drop_lowest(scores, pruned_count(pattern, columns))
