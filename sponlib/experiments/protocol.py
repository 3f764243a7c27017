"""The measurement protocol in one place: the model, the texts and their roles, the windows, the
sparsity levels, and the targets this project's records are held to (docs/protocol.md explains it).

The library takes all of these as arguments; the experiments and the command line take their
defaults from here, so that every record is made the same way.
"""

from __future__ import annotations

from ..data import BROWN_GENRES, genre_corpus
from ..models.gguf import DEFAULT_MODEL

MODEL = DEFAULT_MODEL  # SmolLM2-135M-Instruct, float32 for quality numbers
DTYPE = "float32"

# Texts, by role (named corpora of sponlib.data). The test novel is never calibrated or trained on.
CALIBRATION_TEXT = "austen-train"
TRAIN_TEXT = "austen-train"
VALIDATION_TEXT = "austen-val"
TEST_TEXTS = ("persuasion", "brown")  # in domain, then out of domain
IN_DOMAIN_TEXT = TEST_TEXTS[0]
# Held-out texts of the generalisation record: the test novel first, then every Brown genre.
GENERALIZATION_TEXTS = (IN_DOMAIN_TEXT,) + tuple(genre_corpus(genre) for genre in BROWN_GENRES)

# Windows: non-overlapping, picked with a seed.
WINDOWS = 64
WINDOW_LEN = 512
SEED = 0

# Sparsity levels: the levels people deploy, and beyond them for curves.
LEVELS = (0.25, 0.4, 0.5, 0.6, 0.7)
SWEEP_LEVELS = LEVELS + (0.8, 0.9)
SWEEP_RULES = ("teal", "wina", "greedy")
ABLATION_LEVEL = 0.5  # other rules, other projections, other amounts of data: at this level

# What the default model with the teal mask is held to: (level, index in TEST_TEXTS, least recovery).
RECOVERY_TARGETS = ((0.5, 0, 0.70), (0.5, 1, 0.50), (0.7, 0, 0.85))
# Levels of the task record's tables and figures.
TASK_LEVELS = (0.25, 0.5, 0.7)
