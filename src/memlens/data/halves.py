"""Split-half human memorability scores (the noise ceiling).

Two sources are read:

* an ``.npz`` with arrays ``image`` (N,), ``half1`` and ``half2`` (n_splits, N), as in the lnsim-dev copy;
  optionally ``kind`` (a string: which score the halves are, e.g. ``hit rate``) and further pairs
  ``<kind>__half1``/``<kind>__half2`` holding the halves of other scores of the same images (the demo set
  writes the false-alarm corrected score's halves as ``fa-corrected__half1/2``). The analysis uses the pair
  whose mean agrees best with the score it analyses (:meth:`SplitHalves.matching`), so the reliability is
  computed on the analysed score;
* an LNSIM-layout folder: ``Random_splits/subject_hrs1.mat`` and ``subject_hrs2.mat`` (MATLAB arrays named
  ``subject_hrs1``/``subject_hrs2``, shape (n_splits, N); column i belongs to image ``Image_data/{i+1:04d}.jpg``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["SplitHalves", "load_split_halves", "lnsim_image_ids"]


@dataclass(frozen=True)
class SplitHalves:
    """Hit rates of two random halves of the participants, for each of ``n_splits`` random splits."""

    image_ids: tuple[str, ...]
    half1: np.ndarray  # (n_splits, N)
    half2: np.ndarray  # (n_splits, N)
    #: which score the halves are ("hit rate", "fa-corrected", ...; "unspecified" when the file does not say)
    kind: str = "unspecified"
    #: the halves of other scores of the same images (same ids), e.g. the false-alarm corrected score's
    alternatives: tuple[SplitHalves, ...] = ()

    def __post_init__(self) -> None:
        h1, h2 = np.asarray(self.half1, dtype=float), np.asarray(self.half2, dtype=float)
        if h1.ndim == 1:
            h1 = h1[None, :]
        if h2.ndim == 1:
            h2 = h2[None, :]
        if h1.shape != h2.shape:
            raise DataError(f"split halves differ in shape: half1 {h1.shape}, half2 {h2.shape}")
        if h1.shape[1] != len(self.image_ids):
            raise DataError(f"split halves have {h1.shape[1]} columns but {len(self.image_ids)} image ids")
        object.__setattr__(self, "half1", h1)
        object.__setattr__(self, "half2", h2)

    @property
    def n_splits(self) -> int:
        return int(self.half1.shape[0])

    @property
    def n_images(self) -> int:
        return int(self.half1.shape[1])

    def scores(self) -> np.ndarray:
        """Score per image: mean over splits of the two halves' mean (NaN-aware)."""
        both = np.stack([self.half1, self.half2])
        return np.nanmean(np.nanmean(both, axis=0), axis=0)

    def subset(self, image_ids: list[str] | tuple[str, ...]) -> SplitHalves:
        """The halves restricted to (and reordered as) ``image_ids``; unknown ids raise DataError."""
        index = {name: i for i, name in enumerate(self.image_ids)}
        missing = [i for i in image_ids if i not in index]
        if missing:
            raise DataError(f"{len(missing)} image ids have no split-half scores, e.g. {missing[0]}")
        cols = [index[i] for i in image_ids]
        return SplitHalves(tuple(image_ids), self.half1[:, cols], self.half2[:, cols], self.kind,
                           tuple(a.subset(image_ids) for a in self.alternatives))

    def variants(self) -> list[SplitHalves]:
        """These halves and their alternatives (each without alternatives)."""
        return [SplitHalves(self.image_ids, self.half1, self.half2, self.kind),
                *(SplitHalves(a.image_ids, a.half1, a.half2, a.kind) for a in self.alternatives)]

    def matching(self, scores: np.ndarray) -> tuple[SplitHalves, float]:
        """The variant whose per-image mean agrees best with ``scores`` (aligned with ``image_ids``).

        Returns the variant and the agreement: the Spearman correlation between its mean score and ``scores``
        (1.0 when they are the same score; lower when, e.g., the halves are hit rates and the score is
        false-alarm corrected). NaN agreement when it cannot be computed.
        """
        from scipy.stats import spearmanr

        scores = np.asarray(scores, dtype=float)
        best, best_r = self.variants()[0], -math.inf
        for v in self.variants():
            m = v.scores()
            ok = np.isfinite(m) & np.isfinite(scores)
            r = float(spearmanr(m[ok], scores[ok]).statistic) if ok.sum() >= 3 else math.nan
            if math.isfinite(r) and r > best_r:
                best, best_r = v, r
        return best, (best_r if math.isfinite(best_r) else math.nan)

    def npz_arrays(self) -> dict[str, np.ndarray]:
        """The arrays :func:`load_split_halves` reads back (alternatives included)."""
        out = {"image": np.array(self.image_ids, dtype=str), "half1": np.asarray(self.half1),
               "half2": np.asarray(self.half2), "kind": np.array(self.kind)}
        for a in self.alternatives:
            out[f"{a.kind}__half1"], out[f"{a.kind}__half2"] = np.asarray(a.half1), np.asarray(a.half2)
        return out


def lnsim_image_ids(n: int) -> tuple[str, ...]:
    """Image ids of the original LNSIM layout: column i is ``Image_data/{i+1:04d}.jpg``."""
    return tuple(f"Image_data/{i + 1:04d}.jpg" for i in range(n))


def _load_mat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for bad files
        raise DataError(f"{path}: not a readable MATLAB file ({exc})") from None
    if key not in mat:
        keys = [k for k in mat if not k.startswith("__")]
        raise DataError(f"{path}: no array named {key!r} (found: {', '.join(keys) or 'none'})")
    return np.asarray(mat[key], dtype=float)


def load_split_halves(source: str | os.PathLike) -> SplitHalves:
    """Read split-half scores from an ``.npz`` file or an LNSIM-layout folder (see module docstring).

    Examples
    --------
    >>> import memlens
    >>> # data: a folder made by memlens.make_demo_set, which writes split_halves.npz
    >>> halves = memlens.load_split_halves(f"{data}/split_halves.npz")
    >>> halves.n_splits, halves.n_images
    (5, 40)
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if source.is_dir():
        splits = source / "Random_splits"
        f1, f2 = splits / "subject_hrs1.mat", splits / "subject_hrs2.mat"
        for f in (f1, f2):
            if not f.is_file():
                raise DataError(f"{f}: missing (an LNSIM folder needs Random_splits/subject_hrs1.mat and 2.mat)")
        h1, h2 = _load_mat(f1, "subject_hrs1"), _load_mat(f2, "subject_hrs2")
        if h1.ndim != 2:
            raise DataError(f"{f1}: expected a 2-d array (splits x images), got shape {h1.shape}")
        return SplitHalves(lnsim_image_ids(h1.shape[1]), h1, h2, "hit rate")
    if source.suffix.lower() != ".npz":
        raise DataError(f"{source}: expected an .npz file with image, half1, half2 or an LNSIM folder")
    try:
        with np.load(source, allow_pickle=False) as npz:
            missing = [k for k in ("image", "half1", "half2") if k not in npz.files]
            if missing:
                raise DataError(f"{source}: missing arrays {', '.join(missing)} (found {', '.join(npz.files)})")
            ids = tuple(str(x) for x in npz["image"])
            kind = str(npz["kind"]) if "kind" in npz.files else "unspecified"
            others = sorted({k[: -len("__half1")] for k in npz.files if k.endswith("__half1")})
            alts = []
            for other in others:
                if f"{other}__half2" not in npz.files:
                    raise DataError(f"{source}: {other}__half1 has no {other}__half2")
                alts.append(SplitHalves(ids, npz[f"{other}__half1"], npz[f"{other}__half2"], other))
            return SplitHalves(ids, npz["half1"], npz["half2"], kind, tuple(alts))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{source}: not a readable .npz file ({exc})") from None
