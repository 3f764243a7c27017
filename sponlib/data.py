"""Text corpora and token windows.

Sources of text, all read through `datasets` so that a user's own data plugs in the same way:
- the shipped corpora under data/corpora (named splits below; docs/protocol.md says which
  serves what);
- any UTF-8 text file (.txt or .txt.gz): `text_file(path)`;
- any `datasets` data set, local folder or hub id (online): `hub_dataset("wikitext", ...)`.

Named splits:
    austen-train   five Austen novels, first 95% of each one's tokens (training, calibration)
    austen-val     the last 5% of the same five novels (validation; never the test novel)
    persuasion     Persuasion, the in-domain test novel, never trained or calibrated on
    brown          the whole Brown Corpus, out-of-domain test
    brown-<genre>  one Brown genre, e.g. brown-fiction-mystery
    brown-train    the Brown genres of training mixtures (TRAIN_GENRES)
    brown-val      held-out Brown genres for validation and the safeguard (VALIDATION_GENRES)
    brown-test     Brown genres in neither, for tests only (TEST_GENRES)
    austen-<novel> one whole novel, e.g. austen-emma

Each document becomes one token stream; windows are cut from a stream without overlap and never
cross a document boundary. `token_windows` picks a seeded, deterministic subset of them.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, hub_offline_hint
from .paths import data_dir, display_path

AUSTEN_TRAIN_NOVELS = ("emma", "mansfieldpark", "northangerabbey", "prideprejudice", "sensesensibility")
AUSTEN_TEST_NOVEL = "persuasion"
BROWN_GENRES = (
    "a_press_reportage",
    "b_press_editorial",
    "c_press_reviews",
    "d_religion",
    "e_skill_hobbies",
    "f_popular_lore",
    "g_belles_lettres",
    "h_government",
    "j_learned",
    "k_fiction_general",
    "l_fiction_mystery",
    "m_fiction_science",
    "n_fiction_adventure",
    "p_fiction_romance",
    "r_humor",
)
# The genre protocol (docs/protocol.md): SPON trains on Austen plus TRAIN_GENRES, selects and
# safeguards on VALIDATION_GENRES, and is tested on TEST_GENRES and Persuasion. The genres that
# today's Austen-trained vectors hurt most (reportage, government, romance, adventure) are tests.
TRAIN_GENRES = ("b_press_editorial", "d_religion", "f_popular_lore", "j_learned", "k_fiction_general")
VALIDATION_GENRES = ("c_press_reviews", "e_skill_hobbies", "m_fiction_science")
TEST_GENRES = (
    "a_press_reportage",
    "g_belles_lettres",
    "h_government",
    "l_fiction_mystery",
    "n_fiction_adventure",
    "p_fiction_romance",
    "r_humor",
)
VALIDATION_SHARE = 0.05  # tail of each training novel held out as austen-val


@dataclass(frozen=True)
class TextSource:
    """Where text comes from, and which share of each document's tokens to use."""

    name: str  # shown in tables and result files
    files: tuple[Path, ...] = ()  # local text files, one document each
    hub: tuple[str, str | None, str, str] | None = None  # (path, config, split, column)
    span: tuple[float, float] = (0.0, 1.0)  # [start, end) share of each document's tokens

    def describe(self) -> dict:
        """Provenance for result files."""
        out: dict = {"name": self.name, "span": list(self.span)}
        if self.files:
            out["files"] = [display_path(f) for f in self.files]
        if self.hub:
            out["hub"] = dict(zip(("path", "config", "split", "column"), self.hub))
        return out

    def documents(self) -> list[tuple[str, str]]:
        """(document name, text) pairs, read through `datasets`."""
        if self.hub:
            return [(self.name, _read_hub(*self.hub))]
        return [(_stem(path), _read_text_file(path)) for path in self.files]


@dataclass(frozen=True)
class TokenStream:
    document: str
    offset: int  # position of ids[0] in the document's full token sequence
    ids: np.ndarray  # (n,) int64


@dataclass
class Windows:
    """A batch of equal-length token windows and where each came from."""

    ids: torch.Tensor  # (N, L) int64
    origins: list[tuple[str, int]]  # (document, token offset) of each window
    source: str
    window_len: int
    seed: int
    available: int  # windows the source holds in all
    stride: int | None = None  # tokens between window starts; None: non-overlapping (= window_len)
    bos: int | None = None  # the token each window starts with, when the model needs one (Gemma)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def describe(self) -> dict:
        record = {
            "source": self.source,
            "windows": len(self),
            "window_len": self.window_len,
            "seed": self.seed,
            "available_windows": self.available,
        }
        if self.stride is not None:
            record["stride"] = self.stride
        if self.bos is not None:
            record["bos_token"] = self.bos
        return record


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".txt")


def _corpus_file(folder: str, stem: str) -> Path:
    path = data_dir() / "corpora" / folder / f"{stem}.txt.gz"
    if not path.is_file():
        raise DataError(
            f"shipped corpus file {path} is missing; run from a clone of the project "
            "or set SPONLIB_DATA to its data/ folder"
        )
    return path


def genre_corpus(genre: str) -> str:
    """The corpus name of one Brown genre: "l_fiction_mystery" -> "brown-fiction-mystery"."""
    return "brown-" + genre[2:].replace("_", "-")


def _named_corpora() -> dict[str, tuple[str, tuple[str, ...], tuple[float, float]]]:
    """name -> (folder, file stems, span). Built from the constants above, never per-model."""
    named = {
        "austen-train": ("austen", AUSTEN_TRAIN_NOVELS, (0.0, 1.0 - VALIDATION_SHARE)),
        "austen-val": ("austen", AUSTEN_TRAIN_NOVELS, (1.0 - VALIDATION_SHARE, 1.0)),
        "persuasion": ("austen", (AUSTEN_TEST_NOVEL,), (0.0, 1.0)),
        "brown": ("brown", BROWN_GENRES, (0.0, 1.0)),
        "brown-train": ("brown", TRAIN_GENRES, (0.0, 1.0)),
        "brown-val": ("brown", VALIDATION_GENRES, (0.0, 1.0)),
        "brown-test": ("brown", TEST_GENRES, (0.0, 1.0)),
    }
    for novel in AUSTEN_TRAIN_NOVELS + (AUSTEN_TEST_NOVEL,):
        named[f"austen-{novel}"] = ("austen", (novel,), (0.0, 1.0))
    for genre in BROWN_GENRES:
        named[genre_corpus(genre)] = ("brown", (genre,), (0.0, 1.0))
    return named


def corpus_names() -> list[str]:
    return list(_named_corpora())


def load_corpus(name: str) -> TextSource:
    """A named split of the shipped corpora (see the module docstring)."""
    named = _named_corpora()
    if name not in named:
        raise DataError(
            f"unknown corpus {name!r}. Named corpora: {', '.join(named)}. "
            "For your own text use text_file(path) (CLI: --text-file PATH)."
        )
    folder, stems, span = named[name]
    return TextSource(name, tuple(_corpus_file(folder, s) for s in stems), span=span)


def text_file(path: str | os.PathLike) -> TextSource:
    """Any UTF-8 text file (.txt or gzip-compressed .txt.gz) as one document."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"text file {str(path)!r} does not exist (or is not a file)")
    return TextSource(_stem(path), (path,))


def hub_dataset(path: str, config: str | None = None, split: str = "test", column: str = "text") -> TextSource:
    """A `datasets` data set: a hub id when online (e.g. "wikitext", "wikitext-2-raw-v1") or a
    local folder of data files. Its rows are joined with blank lines into one document, the usual
    convention for WikiText perplexity."""
    name = path if config is None else f"{path}/{config}"
    return TextSource(f"{name}:{split}", hub=(path, config, split, column))


@contextlib.contextmanager
def _quiet_datasets():
    """Hide datasets' per-file progress bars (one per novel clutters every run); restore after."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _read_text_file(path: Path) -> str:
    try:
        import datasets
    except ImportError:  # a machine without `datasets` still reads plain text files, to the same text
        datasets = None
    try:
        if datasets is None:
            with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
                text = f.read().decode("utf-8")
        else:
            with _quiet_datasets():
                rows = datasets.load_dataset("text", data_files=str(path), sample_by="document", split="train")
            text = "".join(rows["text"]) if len(rows) else ""
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except Exception as e:  # datasets wraps reader errors in its own types
        if isinstance(e.__cause__, UnicodeDecodeError) or "decode" in str(e):
            raise DataError(f"{path} is not UTF-8 text: {e}") from e
        raise
    if not text.strip():
        raise DataError(f"text file {path} is empty; give a file with text in it")
    return text


def _read_hub(path: str, config: str | None, split: str, column: str) -> str:
    import datasets

    try:
        rows = datasets.load_dataset(path, config, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as e:
        raise DataError(
            f"could not load data set {path!r} (config {config!r}, split {split!r}): {e}.{hub_offline_hint()}"
        ) from e
    if column not in rows.column_names:
        raise DataError(f"data set {path!r} has no column {column!r}; columns: {rows.column_names}")
    text = "\n\n".join(t for t in rows[column] if t)
    if not text.strip():
        raise DataError(f"data set {path!r} split {split!r} has no text in column {column!r}")
    return text


def tokenize_source(source: TextSource, tokenizer) -> list[TokenStream]:
    """One token stream per document of `source`, cut to the source's span. No special tokens
    are added: a window is a plain slice of running text."""
    streams = []
    for document, text in source.documents():
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        ids = np.asarray(ids, dtype=np.int64)  # (n,)
        start, end = (int(round(share * len(ids))) for share in source.span)
        streams.append(TokenStream(document, start, ids[start:end]))
    return streams


def token_windows(
    streams: list[TokenStream],
    window_len: int,
    n_windows: int | None = None,
    seed: int = 0,
    source: str = "",
    stride: int | None = None,
    bos: int | None = None,
) -> Windows:
    """Cut every stream into windows of `window_len` tokens (a stream's tail shorter than a window
    is dropped) and pick `n_windows` of them at random with `seed`, kept in corpus order.
    `n_windows=None` (or 0) takes them all. Windows do not overlap unless `stride` (tokens between
    window starts, below `window_len`) asks for it: training draws on more distinct windows so.
    With `bos`, each window is that token followed by `window_len - 1` tokens of text."""
    if window_len < 2:
        raise DataError(f"window length must be at least 2 tokens (got {window_len})")
    if bos is not None:
        inner = token_windows(
            streams, window_len - 1, n_windows, seed, source, None if stride is None else min(stride, window_len - 1)
        )
        inner.ids = torch.cat([torch.full((len(inner), 1), bos, dtype=inner.ids.dtype), inner.ids], 1)  # (N, L)
        inner.window_len, inner.bos = window_len, bos
        return inner
    if n_windows is not None and n_windows < 0:
        raise DataError(f"number of windows must be positive, or 0 for all (got {n_windows})")
    if stride is not None and not 1 <= stride <= window_len:
        raise DataError(f"stride must be between 1 and the window length {window_len} (got {stride})")
    step = stride or window_len
    pieces, origins = [], []
    for stream in streams:
        if len(stream.ids) >= window_len:
            starts = range(0, len(stream.ids) - window_len + 1, step)
            pieces.append(np.lib.stride_tricks.sliding_window_view(stream.ids, window_len)[::step])  # (n, L)
            origins += [(stream.document, stream.offset + start) for start in starts]
    available = len(origins)
    name = source or ",".join(s.document for s in streams)
    if available == 0:
        n_tokens = sum(len(s.ids) for s in streams)
        raise DataError(
            f"{name!r} has {n_tokens} tokens, fewer than one window of {window_len}; "
            "use a longer text or a shorter window length"
        )
    if n_windows and n_windows > available:
        raise DataError(
            f"{name!r} holds only {available} windows of {window_len} tokens; ask for "
            f"at most {available} (0 takes them all) or use a shorter window length"
        )
    all_ids = np.concatenate(pieces)  # (available, L)
    if n_windows:
        chosen = np.sort(np.random.default_rng(seed).choice(available, size=n_windows, replace=False))
    else:
        chosen = np.arange(available)
    return Windows(
        torch.from_numpy(np.ascontiguousarray(all_ids[chosen])),
        [origins[i] for i in chosen],
        name,
        window_len,
        seed,
        available,
        stride if step != window_len else None,
    )


def leading_special_token(tokenizer) -> int | None:
    """The token the tokenizer puts before every text (a BOS), or None. Gemma needs it: without
    it Gemma-3-270m's perplexity on Persuasion is 173 instead of 38. SmolLM2's tokenizer adds none."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a")["input_ids"]
    if len(special) == len(plain) + 1 and special[1:] == plain:
        return int(special[0])
    return None


def load_windows(
    source: TextSource,
    tokenizer,
    window_len: int,
    n_windows: int | None = None,
    seed: int = 0,
    stride: int | None = None,
) -> Windows:
    """tokenize_source + token_windows in one call; each window starts with the tokenizer's BOS
    when it adds one (then the window holds window_len - 1 tokens of text)."""
    return token_windows(
        tokenize_source(source, tokenizer),
        window_len,
        n_windows,
        seed,
        source.name,
        stride,
        bos=leading_special_token(tokenizer),
    )
