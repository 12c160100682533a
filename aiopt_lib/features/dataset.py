"""The labelled multimodal dataset: one row per sample, Parquet (zstd), partitioned by symbol and year.

A sample is a bar ``ts`` of a symbol with the ``window`` bars ending at it (the chart image the
models see is drawn from exactly those bars), the causal features at ``ts``, the labels, the label's
end time (for purging) and an image key. Layout of a dataset folder::

    <dir>/dataset.json                         manifest: schema version, config, counts, columns
    <dir>/bars/symbol=EURUSD/bars.parquet      the cleaned bars the samples were built from
    <dir>/samples/symbol=EURUSD/year=2017/part-0.parquet

Every Parquet file carries ``aiopt.schema_version`` in its key-value metadata; readers refuse a
version they do not know instead of misreading it. Rows dropped while building (indicator warm-up,
windows that do not fit, labels whose horizon runs past the data) are counted in the manifest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from aiopt_lib.core.atomic import write_bytes_atomic, write_parquet_atomic, write_text_atomic
from aiopt_lib.core.bars import ensure_bars, infer_timeframe, timeframe_label
from aiopt_lib.core.config import read_yaml_mapping
from aiopt_lib.core.errors import ConfigError, DataError
from aiopt_lib.features.causal import FeatureParams, add_features, feature_columns
from aiopt_lib.features.labels import (
    ForwardReturnParams,
    TripleBarrierParams,
    class_balance,
    forward_return_labels,
    triple_barrier_labels,
)
from aiopt_lib.features.patterns import add_patterns
from aiopt_lib.features.registry import add_indicators
from aiopt_lib.features.render import RenderSpec, render_windows, with_overlays
from aiopt_lib.features.splits import purged_split

__all__ = [
    "DatasetConfig",
    "build_dataset",
    "class_mean_contrast",
    "dataset_verdict",
    "read_samples",
    "render_dataset_images",
]

SCHEMA_VERSION = 1
MANIFEST = "dataset.json"
ID_COLUMNS = ("sample_id", "symbol", "ts", "window", "image_key")


@dataclasses.dataclass(frozen=True)
class DatasetBuild:
    """What :func:`build_dataset` wrote: the folder, the manifest and the counts."""

    path: Path
    manifest: Mapping[str, Any]

    @property
    def n_samples(self) -> int:
        return int(self.manifest["counts"]["samples"])


def sample_ids(symbol: str, ts: pl.Expr, window: int) -> pl.Expr:
    """Deterministic sample id ``EURUSD-20170102T030000-w64``: the same bar and window always get
    the same id, so images and predictions can be keyed by it across runs."""
    return pl.concat_str(
        [pl.lit(f"{symbol}-"), ts.dt.strftime("%Y%m%dT%H%M%S"), pl.lit(f"-w{window}")]
    )


def bars_fingerprint(bars: pl.DataFrame) -> str:
    """A SHA-256 of the bars' content (for manifests and run reports)."""
    digest = hashlib.sha256()
    for column in ("ts", "open", "high", "low", "close", "volume"):
        digest.update(bars.get_column(column).to_numpy().tobytes())
    return digest.hexdigest()


def _metadata(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    meta = {"aiopt.schema_version": str(SCHEMA_VERSION), "aiopt.kind": "dataset"}
    meta.update(extra or {})
    return meta


def write_partitioned(
    samples: pl.DataFrame, root: Path, *, metadata: Mapping[str, str] | None = None
) -> list[Path]:
    """Write samples under ``root/symbol=<S>/year=<Y>/part-0.parquet`` (zstd), one file per
    partition, each atomically and with the schema version in its metadata."""
    written = []
    keyed = samples.with_columns(pl.col("ts").dt.year().alias("_year"))
    for (symbol, year), part in keyed.group_by(["symbol", "_year"], maintain_order=True):
        path = root / f"symbol={symbol}" / f"year={year}" / "part-0.parquet"
        write_parquet_atomic(part.drop("_year"), path, metadata=_metadata(metadata))
        written.append(path)
    return written


def check_schema_version(path: Path) -> None:
    """Raise ``DataError`` naming the file when its schema version is missing or unknown."""
    meta = pl.read_parquet_metadata(path)
    version = meta.get("aiopt.schema_version")
    if version is None:
        raise DataError("not an aiopt dataset file (no aiopt.schema_version metadata)", file=path)
    if int(version) != SCHEMA_VERSION:
        raise DataError(
            f"dataset schema version {version}, this aiopt reads version {SCHEMA_VERSION}; "
            "rebuild the dataset with `aiopt dataset build`",
            file=path,
        )


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a dataset folder."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise DataError("not a dataset folder (no dataset.json)", file=Path(path))
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"dataset schema version {manifest.get('schema_version')}, this aiopt reads "
            f"version {SCHEMA_VERSION}",
            file=manifest_path,
        )
    return manifest


def read_samples(
    path: str | Path, *, symbol: str | None = None, images: bool = False
) -> pl.DataFrame:
    """All samples of a dataset folder, sorted by symbol and time (schema versions checked).

    ``images=True`` adds the binary ``image`` column (PNG bytes; null where none was rendered
    yet, see :func:`render_dataset_images`)."""
    root = Path(path)
    read_manifest(root)
    files = sorted((root / "samples").glob("symbol=*/year=*/*.parquet"))
    if symbol is not None:
        files = [f for f in files if f.parent.parent.name == f"symbol={symbol}"]
    if not files:
        raise DataError("dataset has no sample files", file=root / "samples")
    for file in files:
        check_schema_version(file)
    samples = pl.concat([pl.read_parquet(f) for f in files], how="vertical").sort("symbol", "ts")
    if images:
        samples = samples.join(read_images(root), on="sample_id", how="left")
    return samples


def read_dataset_bars(path: str | Path, symbol: str) -> pl.DataFrame:
    """The cleaned bars a dataset was built from (for rendering the sample windows)."""
    file = Path(path) / "bars" / f"symbol={symbol}" / "bars.parquet"
    if not file.is_file():
        raise DataError(f"dataset has no bars for {symbol}", file=file)
    check_schema_version(file)
    return ensure_bars(pl.read_parquet(file), source=str(file))


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """A dataset configuration from YAML (empty mapping when ``path`` is None)."""
    return {} if path is None else read_yaml_mapping(path, "dataset configuration")


def _timeframe_text(bars: pl.DataFrame) -> str | None:
    td = infer_timeframe(bars)
    return timeframe_label(td) if isinstance(td, dt.timedelta) else None


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``dataset.json`` atomically (last, so a folder with a manifest is complete)."""
    path = root / MANIFEST
    write_text_atomic(path, json.dumps(manifest, indent=2, default=str))
    return path


# ---------------------------------------------------------------------------------------------
# Configuration and building


def _from_mapping(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build the frozen dataclass ``cls`` from a mapping, recursing into dataclass fields and
    turning lists into tuples; unknown keys are a ``ConfigError`` naming them."""
    import typing

    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints.get(name)
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            kwargs[name] = _from_mapping(hint, value, f"{where}.{name}")  # type: ignore[arg-type]
        elif (
            isinstance(value, list)
            and args
            and dataclasses.is_dataclass(args[0])
            and all(isinstance(v, Mapping) for v in value)
        ):  # e.g. features.sessions: a list of Session mappings
            kwargs[name] = tuple(
                _from_mapping(args[0], v, f"{where}.{name}[{i}]") for i, v in enumerate(value)
            )
        elif hint is dt.time and isinstance(value, str):
            kwargs[name] = dt.time.fromisoformat(value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _as_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_as_plain(v) for v in value]
    if isinstance(value, dt.time | dt.date | dt.datetime | dt.timedelta):
        return str(value)
    return value


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """How samples are built.

    ``window``: bars of history per sample (the chart the models see ends at the sample's bar).
    ``stride``: keep every ``stride``-th eligible bar. ``label``: which labelling is the primary
    ``label`` / ``label_end_ts`` (``"triple_barrier"`` or ``"forward_return"``); both are stored
    (``label_tb*`` and ``label_fwd*``). ``features``, ``triple_barrier``, ``forward_return``: the
    parameters of :func:`aiopt_lib.features.causal.add_features` and the labellers.
    ``split_fractions``: the default purged train/validation/test split reported in the manifest.
    """

    symbol: str = "EURUSD"
    window: int = 64
    stride: int = 1
    label: str = "triple_barrier"
    features: FeatureParams = dataclasses.field(default_factory=FeatureParams)
    triple_barrier: TripleBarrierParams = dataclasses.field(default_factory=TripleBarrierParams)
    forward_return: ForwardReturnParams = dataclasses.field(default_factory=ForwardReturnParams)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"window must be an int >= 1, got {self.window!r}")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ConfigError(f"stride must be an int >= 1, got {self.stride!r}")
        if self.label not in ("triple_barrier", "forward_return"):
            raise ConfigError(
                f"label must be 'triple_barrier' or 'forward_return', got {self.label!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DatasetConfig:
        """From a YAML/JSON mapping; nested sections build their parameter dataclasses."""
        values = dict(values)
        nested = {
            "features": FeatureParams,
            "triple_barrier": TripleBarrierParams,
            "forward_return": ForwardReturnParams,
        }
        for key, kind in nested.items():
            if key in values:
                values[key] = _from_mapping(kind, values[key], key)
        return _from_mapping(cls, values, "dataset config")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (what the manifest stores)."""
        return _as_plain(self)


def indicator_and_pattern_frame(bars: pl.DataFrame) -> pl.DataFrame:
    """Bars plus all eight indicators at their default parameters plus every pattern flag
    (``pat_<name>``): what ``aiopt features`` writes."""
    return add_patterns(add_indicators(ensure_bars(bars)))


def _labels_frame(bars: pl.DataFrame, config: DatasetConfig) -> pl.DataFrame:
    tb = triple_barrier_labels(bars, config.triple_barrier)
    fwd = forward_return_labels(bars, config.forward_return)
    frame = pl.DataFrame(
        {
            "label_tb": tb.get_column("label"),
            "label_tb_end_ts": tb.get_column("label_end_ts"),
            "label_tb_barrier": tb.get_column("barrier"),
            "label_tb_return": tb.get_column("ret"),
            "label_fwd": fwd.get_column("label"),
            "label_fwd_end_ts": fwd.get_column("label_end_ts"),
            "label_fwd_return": fwd.get_column("fwd_return"),
        }
    )
    primary = "label_tb" if config.label == "triple_barrier" else "label_fwd"
    return frame.with_columns(
        pl.col(primary).alias("label"), pl.col(f"{primary}_end_ts").alias("label_end_ts")
    )


def make_samples(
    bars: pl.DataFrame, config: DatasetConfig = DatasetConfig(), *, symbol: str | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The sample rows of ``bars`` and the counts of bars left out and why.

    A bar becomes a sample when a full ``window`` of bars ends at it, every feature is defined
    (indicator warm-up over), and its primary label is known (its horizon ends inside the data).
    Columns: ``sample_id, symbol, ts, window, image_key``, the features, the labels,
    ``label_end_ts``.
    """
    ensure_bars(bars)
    symbol = (symbol or config.symbol).upper()
    feature_names = feature_columns(config.features)
    featured = add_features(bars, config.features)
    frame = pl.concat(
        [featured.select("ts", *feature_names), _labels_frame(bars, config)], how="horizontal"
    )
    frame = frame.with_row_index("_bar")
    n = frame.height
    full_window = pl.col("_bar") >= config.window - 1
    on_stride = ((pl.col("_bar") - (config.window - 1)) % config.stride) == 0
    features_known = pl.all_horizontal(pl.col(feature_names).is_not_null())
    labelled = pl.col("label").is_not_null()
    flags = frame.select(
        full_window.alias("w"), on_stride.alias("s"), features_known.alias("f"), labelled.alias("l")
    )
    counts = {
        "bars": n,
        "dropped_short_window": int((~flags["w"]).sum()),
        "dropped_stride": int((flags["w"] & ~flags["s"]).sum()),
        "dropped_feature_warmup": int((flags["w"] & flags["s"] & ~flags["f"]).sum()),
        "dropped_unlabelled": int((flags["w"] & flags["s"] & flags["f"] & ~flags["l"]).sum()),
    }
    samples = (
        frame.filter(full_window & on_stride & features_known & labelled)
        .drop("_bar")
        .with_columns(
            sample_ids(symbol, pl.col("ts"), config.window).alias("sample_id"),
            pl.lit(symbol).alias("symbol"),
            pl.lit(config.window, dtype=pl.Int32).alias("window"),
        )
        .with_columns(pl.col("sample_id").alias("image_key"))
    )
    samples = samples.select(*ID_COLUMNS, *feature_names, pl.exclude(*ID_COLUMNS, *feature_names))
    counts["samples"] = samples.height
    assert sum(v for k, v in counts.items() if k.startswith("dropped_")) + samples.height == n
    return samples, counts


def build_dataset(
    bars: pl.DataFrame,
    out: str | Path,
    config: DatasetConfig = DatasetConfig(),
    *,
    symbol: str | None = None,
    source: str | None = None,
) -> DatasetBuild:
    """Build the sample dataset of ``bars`` into the folder ``out`` (see the module docstring).

    The bars, the partitioned samples and finally the manifest are written, each atomically, so
    a folder with a ``dataset.json`` is complete. Rebuilding into the same folder replaces the
    symbol's files.
    """
    root = Path(out)
    symbol = (symbol or config.symbol).upper()
    samples, counts = make_samples(bars, config, symbol=symbol)
    if samples.height == 0:
        raise DataError(
            f"no samples: {bars.height} bars are too few for window {config.window}, the "
            f"indicator warm-up and the label horizon ({counts})",
            file=source,
        )
    meta = {"aiopt.symbol": symbol, "aiopt.config": json.dumps(config.to_dict())}
    write_parquet_atomic(
        ensure_bars(bars),
        root / "bars" / f"symbol={symbol}" / "bars.parquet",
        metadata=_metadata({**meta, "aiopt.kind": "bars"}),
    )
    for stale in (root / "samples" / f"symbol={symbol}").glob("year=*/*.parquet"):
        stale.unlink()
    files = write_partitioned(samples, root / "samples", metadata=meta)
    split = purged_split(samples, fractions=config.split_fractions)
    balance = class_balance(samples)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "symbol": symbol,
        "source": source,
        "timeframe": _timeframe_text(bars),
        "bars_sha256": bars_fingerprint(bars),
        "first_ts": samples["ts"].min().isoformat(),
        "last_ts": samples["ts"].max().isoformat(),
        "config": config.to_dict(),
        "counts": counts,
        "class_balance": {row["class"]: row["count"] for row in balance.iter_rows(named=True)},
        "class_balance_by_split": class_balance(samples, split=split)
        .with_columns(pl.col("class").cast(pl.String))
        .to_dicts(),
        "split": split.counts(),
        "columns": {
            "ids": list(ID_COLUMNS),
            "features": feature_columns(config.features),
            "labels": [c for c in samples.columns if c.startswith("label")],
        },
        "files": [str(f.relative_to(root)) for f in files],
    }
    write_manifest(root, manifest)
    return DatasetBuild(path=root, manifest=manifest)


# ---------------------------------------------------------------------------------------------
# Images of the samples

IMAGES_DIR = "images"
RENDER_SPEC_FILE = "render_spec.json"


@dataclasses.dataclass(frozen=True)
class ImagesResult:
    """What :func:`render_dataset_images` did: images rendered now, found already done, total."""

    rendered: int
    skipped: int
    total: int
    location: Path


def _spec_record(spec: Any) -> dict[str, Any]:
    return {"aiopt.schema_version": SCHEMA_VERSION, "spec": _as_plain(spec)}


def _check_or_write_spec(images_root: Path, spec: Any) -> None:
    """Images of one dataset folder are all drawn with one spec: refuse to mix."""
    path = images_root / RENDER_SPEC_FILE
    record = _spec_record(spec)
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != json.loads(json.dumps(record, default=str)):
            raise ConfigError(
                f"{path}: images there were drawn with another render spec "
                f"({existing.get('spec')}); delete {images_root} or use the same spec"
            )
        return
    write_text_atomic(path, json.dumps(record, indent=2, default=str))


def image_path(dataset: str | Path, symbol: str, sample_id: str) -> Path:
    """Where folder-mode images live: ``<dataset>/images/<symbol>/<sample_id>.png``."""
    return Path(dataset) / IMAGES_DIR / symbol / f"{sample_id}.png"


def _done_in_column_mode(root: Path) -> set[str]:
    done: set[str] = set()
    for file in root.glob("symbol=*/part-*.parquet"):
        check_schema_version(file)
        done.update(pl.read_parquet(file, columns=["sample_id"])["sample_id"].to_list())
    return done


def render_dataset_images(
    dataset: str | Path,
    spec: Any = None,
    *,
    mode: str = "folder",
    workers: int | None = None,
    batch_size: int = 1024,
    progress: bool = True,
) -> ImagesResult:
    """Render the chart image of every sample of a dataset (the ``window`` bars ending at its ts).

    ``mode="folder"``: one PNG per sample at :func:`image_path` (keyed by ``sample_id``).
    ``mode="column"``: Parquet chunks ``images/symbol=S/part-N.parquet`` with ``sample_id`` and a
    binary ``image`` column (PNG bytes), joined to the samples by :func:`read_samples` with
    ``images=True``. Resumable and idempotent: samples whose image exists are skipped, every file
    is written atomically, and a rerun after an interruption renders only what is missing. All
    images of a folder use one :class:`aiopt_lib.features.render.RenderSpec` (a different one is refused).
    """
    from tqdm.auto import tqdm

    if mode not in ("folder", "column"):
        raise ConfigError(f"mode must be 'folder' or 'column', got {mode!r}")
    spec = spec or RenderSpec()
    root = Path(dataset)
    samples = read_samples(root).select("sample_id", "symbol", "ts", "window")
    images_root = root / IMAGES_DIR
    _check_or_write_spec(images_root, spec)
    done = _done_in_column_mode(images_root) if mode == "column" else set()
    rendered = skipped = 0
    for (symbol,), part in samples.group_by(["symbol"], maintain_order=True):
        bars = with_overlays(read_dataset_bars(root, symbol), spec)
        ends = part.join(bars.select("ts").with_row_index("_end"), on="ts", how="left").get_column(
            "_end"
        )
        if ends.null_count():
            raise DataError(
                f"{ends.null_count()} sample(s) of {symbol} have no bar in the dataset's bars",
                file=root,
            )
        part = part.with_columns(ends.alias("_end"))
        if mode == "folder":
            # only complete files exist under their final name (atomic writes)
            done = {f.stem for f in (images_root / symbol).glob("*.png")}
        todo = part.filter(~pl.col("sample_id").is_in(list(done)))
        skipped += part.height - todo.height
        seq = len(list((images_root / f"symbol={symbol}").glob("part-*.parquet")))
        bar = tqdm(total=todo.height, desc=f"images {symbol}", unit="img", disable=not progress)
        for (window,), group in todo.group_by(["window"], maintain_order=True):
            for offset in range(0, group.height, batch_size):
                batch = group.slice(offset, batch_size)
                pngs = render_windows(
                    bars, batch["_end"].to_numpy(), int(window), spec, output="png", workers=workers
                )
                if mode == "folder":
                    for sample_id, png in zip(batch["sample_id"], pngs, strict=True):
                        write_bytes_atomic(image_path(root, symbol, sample_id), png)
                else:
                    chunk = pl.DataFrame(
                        {"sample_id": batch["sample_id"], "image": pl.Series(pngs, dtype=pl.Binary)}
                    )
                    write_parquet_atomic(
                        chunk,
                        images_root / f"symbol={symbol}" / f"part-{seq:05d}.parquet",
                        metadata=_metadata({"aiopt.kind": "images"}),
                    )
                    seq += 1
                rendered += batch.height
                bar.update(batch.height)
        bar.close()
    return ImagesResult(
        rendered=rendered, skipped=skipped, total=samples.height, location=images_root
    )


def read_images(dataset: str | Path) -> pl.DataFrame:
    """``sample_id`` and ``image`` (PNG bytes) of a dataset's images, from either mode."""
    root = Path(dataset) / IMAGES_DIR
    chunks = sorted(root.glob("symbol=*/part-*.parquet"))
    if chunks:
        for chunk in chunks:
            check_schema_version(chunk)
        return pl.concat([pl.read_parquet(c) for c in chunks]).unique("sample_id", keep="last")
    files = sorted(root.glob("*/*.png"))
    return pl.DataFrame(
        {
            "sample_id": [f.stem for f in files],
            "image": pl.Series([f.read_bytes() for f in files], dtype=pl.Binary),
        }
    )


def dataset_verdict(balance: pl.DataFrame, *, window: int, width: int, height: int) -> str:
    """Notebook 02's answer: what a model sees, from the class ``balance`` of the split
    (:func:`~aiopt_lib.features.labels.class_balance` with ``split``): how many samples, each a
    ``width`` × ``height`` chart of the ``window`` bars up to its own bar, and the training classes'
    shares, naming the rarest class a model could learn to ignore."""
    train = balance.filter(pl.col("part") == "train") if "part" in balance.columns else balance
    total = int(balance.get_column("count").sum())
    shares = {str(c): float(s) for c, s in zip(train["class"], train["share"], strict=True)}
    rarest = min(shares, key=lambda c: shares[c])
    mix = ", ".join(f"{c} {s:.0%}" for c, s in shares.items())
    return (
        f"{total:,} labelled samples, each a {width}×{height} chart of the {window} bars up to "
        f"its own bar (no later one); the training labels are {mix}, so a model that never says "
        f"{rarest} loses little on accuracy: judge the models on log-loss and per-class recall."
    )


def _grey(image: np.ndarray) -> np.ndarray:
    """An image as grey levels: RGB channels (a last axis of 3 or 4) averaged, 2-D kept."""
    image = np.asarray(image, dtype=np.float64)
    return image[..., :3].mean(axis=-1) if image.ndim == 3 else image


def class_mean_contrast(means: Mapping[str, np.ndarray]) -> str:
    """One sentence on how different the classes' mean images are (RGB or grey, ``uint8`` or
    float levels of 255): the largest per-pixel difference between any two class means, and the
    mean absolute one."""
    if len(means) < 2:
        return "Fewer than two classes: nothing to compare."
    names = list(means)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    grey = {name: _grey(image) for name, image in means.items()}
    gaps = {(a, b): np.abs(grey[a] - grey[b]) for a, b in pairs}
    (a, b), widest = max(gaps.items(), key=lambda item: float(item[1].max()))
    average = float(np.mean([g.mean() for g in gaps.values()]))
    return (
        f"The class means differ by at most {float(widest.max()):.0f} of 255 grey levels "
        f"({a} vs {b}) and by {average:.1f} on average per pixel: "
        + (
            "the classes look almost alike on average, any signal is in the details."
            if widest.max() < 16
            else "there is a visible average difference between the classes."
        )
    )
