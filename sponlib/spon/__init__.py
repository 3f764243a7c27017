"""Spontaneous neurons (SPON): one learnable, input-independent vector per sparsified projection,
trained so that the sparse model's next-token distribution matches the dense model's.

    vectors        `SponVectors` (the α's and their provenance), save/load, folding into biases
    levels         `SponLevels`: vectors trained at a few levels, interpolated to any level up to the highest
    distillation   the objective: teacher states, KL to the teacher, validation KL
    config         `TrainConfig`: a run's settings and their schedules
    checkpoint     resumable runs: checkpoints written atomically, refused for another run
    passes         a step's forward and backward passes: micro-batches, halved when one runs out of memory
    training       `train_spon`: data-parallel, micro-batched, thresholds that follow the vectors
    export         a plain Hugging Face checkpoint with the vectors folded into its biases
    safeguard      "never worse": the vectors scaled down until they do not hurt held-out text
"""

from .config import TrainConfig
from .distillation import kl_to_teacher, teacher_states, validation_kl
from .export import fold_and_export
from .levels import SponLevels
from .safeguard import GAMMAS, GammaScan, Interval, gamma_scan, paired_bootstrap, safeguard, scaled
from .training import TrainHistory, train_spon
from .vectors import SponVectors, check_roles, ensure_bias, load_spon, save_spon, thresholds_path

__all__ = [
    "GAMMAS",
    "GammaScan",
    "Interval",
    "SponLevels",
    "SponVectors",
    "TrainConfig",
    "TrainHistory",
    "check_roles",
    "ensure_bias",
    "fold_and_export",
    "gamma_scan",
    "kl_to_teacher",
    "load_spon",
    "paired_bootstrap",
    "safeguard",
    "save_spon",
    "scaled",
    "teacher_states",
    "thresholds_path",
    "train_spon",
    "validation_kl",
]
