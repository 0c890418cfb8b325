"""Write a bioimage.io model package (model spec 0.5) of a trained network.

The package holds the weights twice, as a PyTorch state dict with the architecture that
builds it (mitoseg's own network as a source file that needs only torch; a library network such
as MONAI's by its import path) and as TorchScript (needs only torch); the raw input and the
probabilities with axes ``batch, channel, z, y, x`` and the voxel size in nm; the input's
normalisation as pre-processing and the sigmoid as post-processing; a test input (a tile of a
sample volume, or a synthetic EM tile in the training data's dtype and range) and the output the
model gives for it (also as TIFF sample tensors); a cover
image, the model card and citations; and, under ``config.mitoseg``, the config that training
stored in the checkpoint, from which mitoseg rebuilds the network and decoder exactly
(:mod:`mitoseg.bioimage.package`). Needs the ``bioimage`` extra (bioimageio.spec).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from torch import nn

from mitoseg.bioimage.package import CONFIG_KEY, FORMAT
from mitoseg.datasets.synthetic import make_volume
from mitoseg.files import write_atomic
from mitoseg.io.intensity import Method, RawIntensity, choose_normalization, raw_stats

# Percentiles of :func:`mitoseg.io.intensity.choose_normalization`'s percentile mapping.
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
INSTALL_HINT = "pip install 'mitoseg[bioimage]'"
UINT8 = RawIntensity.from_dict(  # what checkpoints without an intensity record were trained on
    {
        "normalization": {"method": "bit_depth", "low": 0.0, "high": 255.0},
        "stats": {"dtype": "uint8", "min": 0, "max": 255, "mean": 127.5, "std": 0, "p0_5": 0,
                  "p1": 0, "p99": 255, "p99_5": 255, "sampled": 0, "voxels": 0},
    }
)  # fmt: skip


@dataclass(frozen=True)
class Architecture:
    """How bioimage.io tools build the network: ``callable(**kwargs)`` from ``module``, or from
    ``source`` (a Python file inside the package) when given."""

    module: str
    callable: str
    kwargs: dict[str, Any]
    source: Path | None = None

    @classmethod
    def of(cls, target: str, kwargs: dict[str, Any]) -> Architecture:
        """The architecture of a Hydra ``_target_`` (``package.module.Class``); a mitoseg
        network whose module imports nothing of mitoseg travels as that module's source file."""
        module, _, name = target.rpartition(".")
        if not module:
            raise ValueError(f"model._target_ {target!r} names no module")
        imported = importlib.import_module(module)
        source = Path(inspect.getfile(getattr(imported, name)))
        if not target.startswith("mitoseg.") or _imports_mitoseg(source):
            source = None
        else:
            module = inspect.getmodule(getattr(imported, name)).__name__  # type: ignore[union-attr]
        return cls(module, name, kwargs, source)


def _imports_mitoseg(source: Path) -> bool:
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else ["mitoseg"]
        if any(n == "mitoseg" or n.startswith("mitoseg.") for n in names):
            return True
    return False


@dataclass(frozen=True)
class PackageInfo:
    """What a model package says about the model, besides its tensors and weights.

    ``citations`` are ``(text, doi or url)`` pairs; ``documentation`` is the model card
    (Markdown, with a ``## Validation`` section).
    """

    name: str
    description: str
    authors: Sequence[str]
    license: str
    citations: Sequence[tuple[str, str]]
    documentation: str
    tags: Sequence[str] = ("electron-microscopy", "mitochondria", "3d", "segmentation", "mitoseg")
    bioimageio: dict[str, Any] = field(default_factory=dict)  # config.bioimageio extras


@dataclass(frozen=True)
class ModelIO:
    """The network's tensors. ``divisor``: input sizes along (z, y, x) are multiples of it
    (None: the tile shape is the only size known to work)."""

    channels: Sequence[str]
    voxel_size_nm: tuple[float, float, float]
    tile_shape: tuple[int, int, int]
    intensity: RawIntensity | None
    divisor: tuple[int, int, int] | None = None


def make_test_input(io: ModelIO, seed: int = 0) -> np.ndarray:
    """A synthetic EM tile (N=1, C=1, *tile_shape) in the training data's dtype, its grey levels
    spread over the training normalisation's ``low..high`` like uint8 over 0..255."""
    raw, _ = make_volume(io.tile_shape, seed=seed, voxel_size_nm=io.voxel_size_nm)
    intensity = io.intensity or UINT8
    n, dtype = intensity.normalization, np.dtype(intensity.stats.dtype)
    values = n.low + raw.astype(np.float64) / 255.0 * (n.high - n.low)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return values.astype(dtype)[None, None]


def normalize(raw: np.ndarray, intensity: RawIntensity | None) -> np.ndarray:
    """What mitoseg's predictor feeds the network for ``raw`` (see
    :mod:`mitoseg.io.intensity`): float32, same shape."""
    intensity = intensity or UINT8
    if intensity.normalization.method != Method.PERCENTILE:
        return intensity.normalization(raw)
    return choose_normalization(raw_stats(raw[0, 0]), intensity)(raw)


def preprocessing(intensity: RawIntensity | None) -> list[Any]:
    """The input's bioimage.io pre-processing, equal to :func:`normalize`: a fixed linear map
    of the training data's range, or the 0.5 / 99.5 % percentiles mapped where the training
    data has them."""
    from bioimageio.spec.model import v0_5 as spec

    intensity = intensity or UINT8
    n = intensity.normalization
    steps: list[Any] = [spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))]
    if n.method == Method.PERCENTILE:
        low, high = n.map(intensity.stats.p0_5), n.map(intensity.stats.p99_5)
        if not high > low:
            low, high = 0.0, 1.0
        axes = [spec.AxisId(a) for a in "zyx"]
        kwargs = dict(min_percentile=LOW_PERCENTILE, max_percentile=HIGH_PERCENTILE, axes=axes)
        steps.append(spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(**kwargs)))
        gain, offset = high - low, low
    else:
        gain, offset = 1.0 / (n.high - n.low), 0.0 - n.low / (n.high - n.low)
    if (gain, offset) != (1.0, 0.0):
        linear = spec.ScaleLinearKwargs(gain=gain, offset=offset)
        steps.append(spec.ScaleLinearDescr(kwargs=linear))
    # the spec ends pre-processing by casting to the input's ``data`` type unless told otherwise
    return [*steps, spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))]


@torch.no_grad()
def run_net(net: nn.Module, raw: np.ndarray, intensity: RawIntensity | None) -> np.ndarray:
    """Probabilities float32 (N, C, Z, Y, X) in [0, 1] of raw (N, 1, Z, Y, X): normalised,
    the network's logits, the sigmoid (as :meth:`SegmentationModule.predict_probs` without TTA)."""
    logits = net.eval()(torch.from_numpy(normalize(raw, intensity)))
    return torch.sigmoid(logits.float()).numpy()


def cover_image(path: Path, raw: np.ndarray, probs: np.ndarray) -> None:
    """A 2:1 PNG: the middle z section of the input (contrast stretched) beside that of the
    probabilities of channel 0 (black 0, white 1)."""
    from PIL import Image

    z = raw.shape[2] // 2
    panels = []
    image = raw[0, 0, z].astype(np.float32)
    low, high = float(image.min()), float(image.max())
    contrast = (image - low) / (high - low) if high > low else np.zeros_like(image)
    for scaled in (contrast, np.clip(probs[0, 0, z], 0, 1)):
        grey = Image.fromarray((scaled * 255).astype(np.uint8))
        panels.append(grey.resize((256, 256), Image.Resampling.BILINEAR))
    cover = Image.new("L", (512, 256))
    for i, panel in enumerate(panels):
        cover.paste(panel, (256 * i, 0))
    cover.save(path)


def _space_axes(io: ModelIO, output: bool) -> list[Any]:
    from bioimageio.spec.model import v0_5 as spec

    axes: list[Any] = []
    for i, name in enumerate("zyx"):
        scale = dict(id=spec.AxisId(name), scale=float(io.voxel_size_nm[i]), unit="nanometer")
        if output:
            size: Any = spec.SizeReference(
                tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(name)
            )
            axes.append(spec.SpaceOutputAxis(size=size, **scale))
        elif io.divisor is None:
            axes.append(spec.SpaceInputAxis(size=int(io.tile_shape[i]), **scale))
        else:
            step = int(io.divisor[i])
            # two levels of pooling at least: instance / group norms need >1 voxel per channel
            smallest = min(int(io.tile_shape[i]), 2 * step)
            size = spec.ParameterizedSize(min=max(smallest, step), step=step)
            axes.append(spec.SpaceInputAxis(size=size, **scale))
    return axes


def _tensors(io: ModelIO, folder: Path) -> tuple[Any, Any]:
    from bioimageio.spec.model import v0_5 as spec

    intensity = io.intensity or UINT8
    channels = [spec.Identifier(c) for c in io.channels]
    raw = spec.InputTensorDescr(
        id=spec.TensorId("raw"),
        description=f"EM raw ({intensity.stats.dtype}, {intensity.normalization.describe()})",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier("raw")]),
            *_space_axes(io, output=False),
        ],
        test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=spec.FileDescr(source=folder / "sample_input.tif"),
        data=spec.IntervalOrRatioDataDescr(type=intensity.stats.dtype),
        preprocessing=preprocessing(io.intensity),
    )
    probs = spec.OutputTensorDescr(
        id=spec.TensorId("probs"),
        description=f"probabilities in [0, 1] of {', '.join(io.channels)}",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=channels), *_space_axes(io, True)],
        test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=spec.FileDescr(source=folder / "sample_output.tif"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[spec.SigmoidDescr()],
    )
    return raw, probs


def _weights(net: nn.Module, arch: Architecture, example: torch.Tensor, folder: Path) -> Any:
    from bioimageio.spec.model import v0_5 as spec

    torch.save(net.state_dict(), folder / "weights.pt")
    with torch.no_grad(), warnings.catch_warnings():
        # the input-size check is run once while tracing; the sizes it admits stay admitted
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net.eval(), example, check_trace=False)
    traced.save(str(folder / "weights_torchscript.pt"))
    version = spec.Version(torch.__version__.split("+")[0])
    if arch.source is not None:
        shutil.copyfile(arch.source, folder / arch.source.name)
        architecture: Any = spec.ArchitectureFromFileDescr(
            source=folder / arch.source.name, callable=arch.callable, kwargs=arch.kwargs
        )
    else:
        architecture = spec.ArchitectureFromLibraryDescr(
            import_from=arch.module, callable=arch.callable, kwargs=arch.kwargs
        )
    return spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt", architecture=architecture, pytorch_version=version
        ),
        torchscript=spec.TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt",
            pytorch_version=version,
            parent="pytorch_state_dict",
        ),
    )


def describe(
    net: nn.Module,
    arch: Architecture,
    io: ModelIO,
    info: PackageInfo,
    mitoseg: dict[str, Any],
    folder: Path,
    sample: np.ndarray | None = None,
) -> Any:
    """The validated :class:`bioimageio.spec.ModelDescr` of the package, its files written to
    ``folder``; ``mitoseg`` goes to ``config.mitoseg`` (with its ``format``). ``sample``: the
    test input, (Z, Y, X) of a valid input size in the training dtype (default: synthetic,
    :func:`make_test_input`)."""
    try:
        from bioimageio.spec.model import v0_5 as spec
    except ImportError as error:
        raise ImportError(
            f"writing a bioimage.io package needs bioimageio.spec: {INSTALL_HINT}"
        ) from error
    raw = make_test_input(io) if sample is None else sample[None, None]
    probs = run_net(net, raw, io.intensity)
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", probs)
    tifffile.imwrite(folder / "sample_input.tif", raw[0, 0])
    tifffile.imwrite(folder / "sample_output.tif", probs[0])
    cover_image(folder / "cover.png", normalize(raw, io.intensity), probs)
    (folder / "README.md").write_text(info.documentation)
    inputs, outputs = _tensors(io, folder)
    example = torch.from_numpy(normalize(raw, io.intensity))
    bioimageio = {
        "architecture_type": arch.callable[:32],
        "model_parameter_count": sum(p.numel() for p in net.parameters()),
        **info.bioimageio,
    }
    return spec.ModelDescr(
        name=info.name,
        description=info.description,
        authors=[spec.Author(name=a) for a in info.authors],
        cite=[_cite(spec, text, ref) for text, ref in info.citations],
        license=info.license,
        tags=list(info.tags),
        covers=[spec.FileDescr(source=folder / "cover.png")],
        documentation=spec.FileDescr(source=folder / "README.md"),
        inputs=[inputs],
        outputs=[outputs],
        weights=_weights(net, arch, example, folder),
        config=spec.Config(
            bioimageio=spec.BioimageioConfig(**bioimageio),
            **{CONFIG_KEY: {**mitoseg, "format": FORMAT}},
        ),
    )


def _cite(spec: Any, text: str, ref: str) -> Any:
    if ref.startswith(("http://", "https://")):
        return spec.CiteEntry(text=text, url=ref)
    return spec.CiteEntry(text=text, doi=ref)


def export_package(
    net: nn.Module,
    arch: Architecture,
    io: ModelIO,
    info: PackageInfo,
    mitoseg: dict[str, Any],
    output: str | Path,
    sample: np.ndarray | None = None,
) -> Path:
    """Write the model package ``output`` (a zip file, atomically) and return its path; see
    :func:`describe`."""
    from bioimageio.spec import save_bioimageio_package

    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="mitoseg-bioimage-") as tmp:
        descr = describe(net, arch, io, info, mitoseg, Path(tmp), sample)

        def write(path: Path) -> None:
            zipped = path.with_name(path.name + ".zip")  # the writer wants a .zip suffix
            try:
                save_bioimageio_package(descr, output_path=zipped)
                zipped.rename(path)
            finally:
                zipped.unlink(missing_ok=True)

        return write_atomic(output, write)


def run_bioimageio_test(path: str | Path, devices: Sequence[str] = ("cpu",)) -> Any:
    """bioimageio.core's test of a package (loads it, validates it, runs both weight formats on
    the test input, compares with the test output); returns its ``ValidationSummary``."""
    try:
        from bioimageio.core import test_model
    except ImportError as error:
        raise ImportError(
            f"testing a bioimage.io package needs bioimageio.core: {INSTALL_HINT}"
        ) from error
    return test_model(str(path), devices=list(devices))
