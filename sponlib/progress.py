"""Progress bars: shown when a caller asks for them, unless TQDM_DISABLE is set in the environment.

tqdm reads TQDM_DISABLE only for arguments left unset, and only in some versions; passing
`disable=no_bars(progress)` makes the variable win everywhere, so logs of long runs stay clean.
"""

from __future__ import annotations

import os


def no_bars(progress: bool) -> bool:
    """True when no bar should show: the caller asked for none, or TQDM_DISABLE is set (not "0")."""
    return not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
