"""``mitoseg-predict``'s voxel grids: the output carries the input's voxel size, a warning says
when it is not the model's, and ``resample=true`` predicts on the model's grid.

The input's voxel size is ``voxel_size_nm=`` when given, else the one its file states; only an
input without one takes the model's (with a warning). With ``resample=true`` and both known, the
input is resampled to the model's voxel size into ``cache_dir`` (block by block, kept for
later runs), predicted there into a resumable work output in ``cache_dir``, and the
probabilities are resampled back onto the input's grid into ``output`` (block by block,
atomically); the work output is then removed (:mod:`mitoseg.predict.resample`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mitoseg import io
from mitoseg.io.sources import read_voxel_size
from mitoseg.io.voxels import TOLERANCE, differing_axes, format_nm
from mitoseg.predict.blocks import BlockPlan
from mitoseg.predict.resample import resample_volume, resampled_shape
from mitoseg.predict.writer import create_probs

log = logging.getLogger(__name__)

Size = tuple[float, float, float]


def _size(value: Any) -> Size | None:
    return None if value is None else tuple(float(v) for v in value)  # type: ignore[return-value]


@dataclass(frozen=True)
class PredictGrid:
    """The input volume (a zarr, ``(Z, Y, X)``), its voxel size and the model's, in nm."""

    raw: Path
    input_nm: Size | None
    model_nm: Size | None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in io.open_volume(self.raw).shape)

    @property
    def output_nm(self) -> Size | None:
        """The output's voxel size: the input's, else the model's."""
        return self.input_nm if self.input_nm is not None else self.model_nm

    @property
    def model_shape(self) -> tuple[int, ...] | None:
        """The input's shape on the model's grid; None when a voxel size is unknown."""
        if self.input_nm is None or self.model_nm is None:
            return None
        return resampled_shape(self.shape, self.input_nm, self.model_nm)

    def warn(self, resample: bool) -> None:
        """Say when the output cannot carry the input's own voxel size, or when it is not the
        model's."""
        if self.input_nm is None:
            log.warning(
                "input %s states no voxel size: the output gets the model's, %s; pass "
                "voxel_size_nm=[Z,Y,X] (nm) to give the input's",
                self.raw, format_nm(self.model_nm) if self.model_nm else "none (unknown too)",
            )  # fmt: skip
            return
        differ = differing_axes(self.input_nm, self.model_nm) if self.model_nm else []
        if differ and not resample:
            log.warning(
                "input %s has voxel size %s but the model was trained at %s: they differ by "
                "more than %d %% on %s; pass resample=true to predict at the model's voxel size",
                self.raw, format_nm(self.input_nm), format_nm(self.model_nm),
                round(TOLERANCE * 100), ", ".join(differ),
            )  # fmt: skip

    def resampling(self, resample: bool) -> bool:
        """Whether the net runs on a resampled input: asked for, and the grids differ."""
        if not resample:
            return False
        if self.model_shape is None:
            log.warning(
                "resample=true: the input's or the model's voxel size is unknown: not resampled"
            )
            return False
        return self.model_shape != self.shape

    def model_input(self, cache_dir: Path, block_shape: Any) -> tuple[Path, Size]:
        """The input resampled to the model's voxel size in ``cache_dir`` (built once), and its
        voxel size (the model's, up to rounding of the shape)."""
        assert self.input_nm is not None and self.model_shape is not None
        shape, target = self.shape, self.model_shape
        voxel = tuple(n * s / t for n, s, t in zip(shape, self.input_nm, target, strict=True))
        source = io.open_volume(self.raw)
        key = f"{self.raw.resolve()}|{_stamp(self.raw)}|{target}"
        dst = Path(cache_dir) / f"{self.raw.stem}-at-{_nm(voxel)}-{_digest(key)}.zarr"
        if not dst.exists():
            log.info("resampling %s %s -> %s %s", self.raw, shape, dst, target)
            attrs = {
                "axes": list(io.AXES),
                "kind": "raw",
                "voxel_size_nm": list(voxel),
                "source": str(self.raw),
            }
            with io.atomic_dir(dst, overwrite=False) as tmp:
                out = io.create_volume(tmp, target, source.dtype, chunks=source.chunks, attrs=attrs)
                resample_volume(source, out, block_shape)
        return dst, voxel  # type: ignore[return-value]

    def write_back(self, probs: Path, output: Path, plan: BlockPlan, overwrite: bool) -> None:
        """Resample the probabilities ``probs`` (on the model's grid) onto the input's grid
        into ``output``, then remove ``probs``."""
        log.info("resampling %s back to %s on the input's grid %s", probs, output, self.shape)
        with io.atomic_dir(output, overwrite) as tmp:
            out = create_probs(
                tmp, plan.channels, self.shape, plan.dtype, self.output_nm, plan.chunk_shape
            )
            resample_volume(io.open_volume(probs), out, plan.block_shape)
        shutil.rmtree(probs)


def predict_grid(raw: Path, given_nm: Any, model_nm: Any) -> PredictGrid:
    """The grid of ``raw`` (a zarr): ``given_nm`` when given, else the voxel size it states."""
    stated = read_voxel_size(raw)
    input_nm = _size(given_nm) or (stated.complete if stated is not None else None)
    return PredictGrid(raw, input_nm, _size(model_nm))


def work_output(cache_dir: Path, output: Path, plan: BlockPlan) -> Path:
    """Where the probabilities on the model's grid are predicted (resumable): one name per
    job, so that a rerun of the same job resumes it."""
    key = json.dumps(asdict(plan), sort_keys=True, default=str)
    return Path(cache_dir) / f"{output.stem}-model-grid-{_digest(key)}.zarr"


def _stamp(path: Path) -> str:
    meta = [p for p in (path / "zarr.json", path / ".zarray") if p.exists()]
    return str(meta[0].stat().st_mtime_ns) if meta else ""


def _digest(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def _nm(voxel: Any) -> str:
    return "x".join(f"{v:.3g}" for v in voxel) + "nm"
