"""The texts of the genre protocol (docs/protocol.md), as token windows, and the recipes it compares.

    train       each training text of the recipes: Austen alone, or Austen plus the training genres
    select      small validation texts whose KL picks a run's best step (Austen's tail, held-out genres)
    validation  the held-out genres, more windows: scales γ, the safeguard and the choice of recipe
    refit       calibration text: the thresholds are refitted on it under the vectors, so that the
                sparsity stays defined on the text it was calibrated on whatever SPON trains on
    tests       the test novel and the genres in neither training nor validation; never used to choose

Every split is a named corpus of sponlib.data, picked with one seed; tests/test_genres.py checks
that no test window's text appears in any training or validation text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data import Windows, load_corpus, load_windows
from ..errors import DataError, InvalidArgumentError
from ..mixtures import mixture_windows, parse_sources
from . import protocol

MIXTURE = protocol.ROBUST_TRAIN_TEXTS[1]
VALIDATION = protocol.ROBUST_VALIDATION_TEXT


@dataclass(frozen=True)
class Recipe:
    """One way of training SPON, a row of the ablation."""

    name: str
    train: str  # training text: a named corpus or a mixture "a+b"
    select: str  # validation text whose KL picks the best step
    weight_decay: float = 0.0  # AdamW's decoupled decay on α
    shift_bound: float = 0.0  # ‖W α‖ ≤ this × ‖W E[x − S(x)]‖ per projection; 0: no bound
    gamma: str = "one"  # "one": the vectors as trained; "best": scaled by the γ best on validation
    steps: int | None = None  # optimiser steps; None: the run's setting
    closed_form: bool = False  # no training: α = E[x − S(x)] on the training text, the mask's thresholds
    about: str = ""

    @property
    def training(self) -> str:
        """A name for the trained vectors: recipes that differ only in γ share them."""
        name = f"{self.train}@{self.select}"
        if self.weight_decay:
            name += f"-wd{self.weight_decay:g}"
        if self.shift_bound:
            name += f"-bound{self.shift_bound:g}"
        if self.steps:
            name += f"-steps{self.steps}"
        if self.closed_form:
            name = f"closed-form-{self.train}"
        return name.replace("+", "_")

    def describe(self) -> dict:
        return {
            "name": self.name,
            "train": self.train,
            "select": self.select,
            "weight_decay": self.weight_decay,
            "shift_bound": self.shift_bound,
            "gamma": self.gamma,
            "steps": self.steps,
            "closed_form": self.closed_form,
            "about": self.about,
        }


RECIPES = (
    Recipe("austen", protocol.TRAIN_TEXT, protocol.VALIDATION_TEXT, about="as before: Austen alone, steps on Austen"),
    Recipe("mixture", MIXTURE, protocol.VALIDATION_TEXT, about="a diverse training mixture"),
    Recipe("mixture+select", MIXTURE, VALIDATION, about="... and steps chosen on held-out genres"),
    Recipe("mixture+select+gamma", MIXTURE, VALIDATION, gamma="best", about="... and a scale γ chosen on them"),
    Recipe("mixture+select+decay", MIXTURE, VALIDATION, weight_decay=4.0, about="... and weight decay on α"),
    Recipe("mixture+select+bound", MIXTURE, VALIDATION, shift_bound=2.0, about="... and ‖Wα‖ ≤ 2 mean residuals"),
    Recipe(
        "closed-form",
        protocol.TRAIN_TEXT,
        protocol.VALIDATION_TEXT,
        closed_form=True,
        about="no training: α = E[x − S(x)] on Austen, the mean the mask removes",
    ),
)


# Named, but not in the default ablation: each costs GPU time that a record pays on request.
EXTRA_RECIPES = (
    Recipe("mixture+select+gamma+long", MIXTURE, VALIDATION, gamma="best", steps=600, about="... trained 600 steps"),
)


def recipe_named(name: str) -> Recipe:
    for recipe in RECIPES + EXTRA_RECIPES:
        if recipe.name == name:
            return recipe
    known = ", ".join(r.name for r in RECIPES + EXTRA_RECIPES)
    raise InvalidArgumentError(f"no recipe {name!r}; recipes: {known}")


@dataclass
class GenreTexts:
    """Token windows of every split of the genre protocol."""

    train: dict[str, Windows]  # training text -> windows (overlapping, as training takes them)
    select: dict[str, Windows]  # selection text -> windows
    validation: Windows
    refit: Windows
    tests: list[Windows]

    def describe(self) -> dict:
        return {
            "train": {name: w.describe() for name, w in self.train.items()},
            "select": {name: w.describe() for name, w in self.select.items()},
            "validation": self.validation.describe(),
            "refit": self.refit.describe(),
            "tests": [w.describe() for w in self.tests],
        }


def _at_most(source, tokenizer, window_len: int, windows: int, seed: int) -> Windows:
    """`windows` windows of a test text, or all it holds when it holds fewer (Brown's humour genre
    holds 49 of 512 tokens)."""
    try:
        return load_windows(source, tokenizer, window_len, windows, seed)
    except DataError:
        return load_windows(source, tokenizer, window_len, 0, seed)


def genre_texts(
    tokenizer,
    windows: int = protocol.WINDOWS,
    window_len: int = protocol.WINDOW_LEN,
    seed: int = protocol.SEED,
    train_windows: int = 1024,
    stride: int | None = None,
    select_windows: int = 16,
    refit_windows: int = 8,
    recipes=RECIPES,
) -> GenreTexts:
    """The windows of every split the `recipes` need; training windows overlap by `stride`
    (default a quarter of the length), as the `train` command takes them."""
    stride = stride or max(1, window_len // 4)

    def windows_of(spec: str, n: int, step: int | None = None) -> Windows:
        return mixture_windows(parse_sources(spec), tokenizer, window_len, n, seed, step)

    return GenreTexts(
        train={spec: windows_of(spec, train_windows, stride) for spec in dict.fromkeys(r.train for r in recipes)},
        select={spec: windows_of(spec, select_windows) for spec in dict.fromkeys(r.select for r in recipes)},
        validation=windows_of(VALIDATION, windows),
        refit=windows_of(protocol.CALIBRATION_TEXT, refit_windows),
        tests=[
            _at_most(load_corpus(name), tokenizer, window_len, windows, seed) for name in protocol.ROBUST_TEST_TEXTS
        ],
    )
