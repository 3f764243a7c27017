"""Errors sponlib raises for bad input: each message says what was wrong and what to do.

Every class derives from `SponlibError`, so the CLI can print the message alone (no traceback)
and callers can catch one type. Each also derives from the builtin a caller would expect
(ValueError for a bad argument, ImportError for a missing package, ...).
"""

import os


def hub_offline_hint() -> str:
    """A sentence to append to a failed hub look-up when the hub is switched off."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
    return " The hub is switched off here (HF_HUB_OFFLINE=1)." if offline else ""


class SponlibError(Exception):
    """Base class of every error sponlib raises on purpose."""


class UnknownModelError(SponlibError, ValueError):
    """A model name that is neither a known name, a local folder nor a reachable hub id."""


class MissingPackageError(SponlibError, ImportError):
    """A package that a feature needs is not installed; the message gives the install command."""


class ChecksumError(SponlibError):
    """A file's sha256 differs from the one sponlib expects (corrupt, truncated or replaced)."""


class UnsupportedArchitectureError(SponlibError, ValueError):
    """A model whose decoder blocks no architecture adapter describes."""


class DataError(SponlibError, ValueError):
    """A text source that cannot give what was asked: missing, empty, too short, bad split."""


class NumericalError(SponlibError, FloatingPointError):
    """NaN or infinity where a finite number is required."""


class InvalidArgumentError(SponlibError, ValueError):
    """An argument outside what a function accepts (unknown dtype, bad batch size, ...)."""


class FingerprintError(SponlibError, ValueError):
    """A thresholds, calibration or SPON file made for another model."""


class CorruptFileError(SponlibError, ValueError):
    """A file sponlib wrote that is truncated, damaged or not what its name says."""
