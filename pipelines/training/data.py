"""Parquet tables -> training samples (Ray Data) -> multitask batches.

Ray Data reads the ingested tables, repeats VinDr rows ``factor`` times (exact oversampling), then decodes the PNG,
augments image + boxes, and turns each row's nested columns into fixed-size arrays with presence masks (one row =
one image; a source leaves the targets it lacks marked unknown). Workers stream their shard and :func:`collate`
builds a :class:`~chex_model.multitask.Batch`, subsampling classes and regions as the reference does.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.training.augment import (
    AugmentConfig,
    flip_region,
    photometric,
    sample_transform,
    swap_left_right,
    warp_boxes,
    warp_image,
)
from preprocessing.classes import (
    CIG_ANATOMICAL_FINDINGS_43,
    CIG_ANATOMY_29,
    CIG_DISEASES_10,
    FRONTAL_VIEWS,
    VINDR_LOCAL_22,
)
from preprocessing.image_io import decode_png
from preprocessing.records import split_dir

REGIONS = CIG_ANATOMY_29
FINDINGS = CIG_ANATOMICAL_FINDINGS_43 + CIG_DISEASES_10
PATHOLOGIES = VINDR_LOCAL_22
MAX_BOXES = 16  # boxes per class and image kept as targets (VinDr fused boxes rarely exceed 6)
# Region j of a flipped image is region FLIP_PERM[j] of the original; -1 where the mirror region has no name of its own
# (after a flip the "right atrium" box lies on the image's left, where no region of that name exists: it is dropped).
FLIP_PERM = np.array([REGIONS.index(flip_region(r)) if flip_region(r) in REGIONS else -1 for r in REGIONS])
_REGION_INDEX = {r: i for i, r in enumerate(REGIONS)}
_FINDING_INDEX = {f: i for i, f in enumerate(FINDINGS)}
_PATHO_INDEX = {c: i for i, c in enumerate(PATHOLOGIES)}
TRAIN_SOURCES = ("mimic_cxr", "vindr_cxr")


def table_paths(tables: Path, source: str, split: str) -> list[str]:
    return sorted(str(p) for p in split_dir(tables, source, split).glob("*.parquet"))


def oversampling_factor(n_mimic: int, n_vindr: int, factor: int = 0) -> int:
    """VinDr copies per epoch: ``factor`` if set, else round(N_mimic / N_vindr), at least 1."""
    if factor > 0:
        return factor
    if n_vindr == 0:
        return 0
    return max(1, round(n_mimic / n_vindr))


def _row_seed(seed: int, sample_id: str, copy: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{sample_id}/{copy}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def encode_row(row: dict[str, Any], size: int, augment: AugmentConfig | None, seed: int | None) -> dict[str, Any]:
    """One table row -> fixed-size arrays: image, pathology labels / boxes, anatomy boxes / labels, texts (JSON).
    ``seed`` fixes the row's augmentation as a function of (seed, row, copy); ``None`` draws fresh randomness."""
    rng = np.random.default_rng(None if seed is None else _row_seed(seed, row["sample_id"], int(row.get("copy", 0))))
    image = decode_png(row["image_png"])
    if augment is not None and augment.enabled:
        tf = sample_transform(rng, augment)
        matrix, flipped = tf.matrix, tf.flipped
    else:
        matrix, flipped = np.eye(3), False
    pixels = warp_image(image, matrix, size)
    if augment is not None and augment.enabled:
        pixels = photometric(pixels, rng, augment)
    min_vis = augment.min_visibility if augment is not None else 0.0
    is_vindr = row["source"] == "vindr_cxr"

    c, a, f = len(PATHOLOGIES), len(REGIONS), len(FINDINGS)
    patho_labels = np.full(c, -1, dtype=np.int8)
    patho_boxes = np.zeros((c, MAX_BOXES, 4), dtype=np.float32)
    patho_mask = np.zeros((c, MAX_BOXES), dtype=bool)
    if is_vindr:
        for lab in row.get("labels") or []:
            if lab["name"] in _PATHO_INDEX:
                patho_labels[_PATHO_INDEX[lab["name"]]] = 1 if lab["value"] == 1 else 0
        named = [(b["name"], [b["cx"], b["cy"], b["w"], b["h"]]) for b in row.get("boxes") or [] if b["name"] in _PATHO_INDEX]
        if named:
            warped, vis = warp_boxes(np.array([b for _, b in named], dtype=np.float64), matrix)
            counts = np.zeros(c, dtype=int)
            for (name, _), box, v in zip(named, warped, vis):
                k = _PATHO_INDEX[name]
                patho_labels[k] = 1  # a class with a box is present
                if v >= max(min_vis, 1e-6) and counts[k] < MAX_BOXES:
                    patho_boxes[k, counts[k]] = box
                    patho_mask[k, counts[k]] = True
                    counts[k] += 1

    anat_boxes = np.zeros((a, 4), dtype=np.float32)
    anat_present = np.zeros(a, dtype=bool)
    anat_labels = np.full((a, f), -1, dtype=np.int8)
    phrases: list[list[str]] = [[] for _ in range(a)]
    regions = [(b["name"], [b["cx"], b["cy"], b["w"], b["h"]]) for b in row.get("region_boxes") or [] if b["name"] in _REGION_INDEX]
    if regions:
        warped, vis = warp_boxes(np.array([b for _, b in regions], dtype=np.float64), matrix)
        for (name, _), box, v in zip(regions, warped, vis):
            if v >= max(min_vis, 1e-6):
                anat_boxes[_REGION_INDEX[name]] = box
                anat_present[_REGION_INDEX[name]] = True
        anat_labels[:] = 0  # a scene graph lists what it found; unmentioned findings are absent
        for lab in row.get("region_labels") or []:
            if lab["region"] in _REGION_INDEX and lab["finding"] in _FINDING_INDEX:
                anat_labels[_REGION_INDEX[lab["region"]], _FINDING_INDEX[lab["finding"]]] = 1 if lab["value"] == 1 else 0
        for rp in row.get("region_phrases") or []:
            if rp["region"] in _REGION_INDEX:
                phrases[_REGION_INDEX[rp["region"]]] = list(rp["phrases"])
    sentences = list(row.get("report_sentences") or [])
    if flipped:  # mirror identities and words: the "right lung" box is now on the image's other side
        anat_boxes, anat_present, anat_labels = anat_boxes[FLIP_PERM], anat_present[FLIP_PERM] & (FLIP_PERM >= 0), anat_labels[FLIP_PERM]
        anat_labels[FLIP_PERM < 0] = -1
        phrases = [[swap_left_right(p) for p in phrases[j]] if j >= 0 else [] for j in FLIP_PERM]
        sentences = [swap_left_right(s) for s in sentences]
    return {
        "sample_id": row["sample_id"], "source": row["source"], "image": pixels,
        "patho_labels": patho_labels, "patho_boxes": patho_boxes, "patho_box_mask": patho_mask,
        "has_patho_boxes": np.bool_(is_vindr), "anat_boxes": anat_boxes, "anat_present": anat_present,
        "anat_labels": anat_labels, "texts": json.dumps({"phrases": phrases, "sentences": sentences}),
    }


def encode_batch(table, size: int, augment: AugmentConfig | None, seed: int | None) -> dict[str, np.ndarray]:
    """``map_batches`` body (pyarrow in, numpy out): rows of one table batch -> stacked arrays."""
    rows = [encode_row(row, size, augment, seed) for row in table.to_pylist()]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def repeat_rows(table, factor: int):
    """``map_batches`` body (pyarrow): every row ``factor`` times, tagged with its copy number (exact oversampling)."""
    import pyarrow as pa

    n = len(table)
    out = table.drop_columns(["copy"]).take(pa.array(np.repeat(np.arange(n), factor)))
    return out.append_column("copy", pa.array(np.tile(np.arange(factor), n), pa.int64()))


COLUMNS = ["sample_id", "source", "image_png", "labels", "boxes", "region_boxes", "region_labels", "region_phrases",
           "report_sentences"]


def read_table_file(batch, columns: list[str], exclude_ids: list[str], factors: dict[str, int], frontal_only: bool = False):
    """``map_batches`` body: each input row names one Parquet file of one source; returns its rows (projected to
    ``columns``) without excluded image ids (and, with ``frontal_only``, without lateral MIMIC-CXR views), tagged
    with the source, VinDr rows repeated ``factors[source]`` times."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = []
    for path, source in zip(batch["path"].to_pylist(), batch["source"].to_pylist()):
        table = pq.read_table(path, columns=columns + ["image_id", "view_position"])
        if exclude_ids and source == "mimic_cxr":
            table = table.filter(pc.invert(pc.is_in(table["image_id"], value_set=pa.array(exclude_ids, pa.string()))))
        if frontal_only and source == "mimic_cxr":
            table = table.filter(pc.is_in(table["view_position"], value_set=pa.array(sorted(FRONTAL_VIEWS), pa.string())))
        table = table.drop_columns(["image_id", "view_position"]).append_column("source", pa.array([source] * len(table), pa.string()))
        parts.append(repeat_rows(table.append_column("copy", pa.array([0] * len(table), pa.int64())), factors.get(source, 1)))
    return pa.concat_tables(parts)


def _count_rows(paths: list[str], exclude_ids: set[str] | None, limit: int, frontal_only: bool = False) -> int:
    """Rows the dataset will yield, from the Parquet files on the driver (no Ray Data execution)."""
    import polars as pl

    frame = pl.read_parquet(paths, columns=["image_id", "view_position"])
    if exclude_ids:
        frame = frame.filter(~pl.col("image_id").is_in(sorted(exclude_ids)))
    if frontal_only:
        frame = frame.filter(pl.col("view_position").is_in(sorted(FRONTAL_VIEWS)))
    return min(len(frame), limit) if limit else len(frame)


def ms_cxr_image_ids(tables: Path) -> set[str]:
    """MIMIC dicom ids of every MS-CXR image (evaluation data, kept out of training by default)."""
    import polars as pl

    paths = [p for split in ("train", "val", "test") for p in table_paths(tables, "ms_cxr", split)]
    return set(pl.read_parquet(paths, columns=["image_id"])["image_id"].to_list()) if paths else set()


def build_dataset(tables: Path, split: str, size: int, augment: AugmentConfig | None, seed: int, vindr_factor: int = 0,
                  exclude_ids: set[str] | None = None, limit: int = 0, reproducible_augment: bool = True,
                  cache_rows: bool = False, sources: tuple[str, ...] = TRAIN_SOURCES, frontal_only: bool = False):
    """A Ray Dataset of encoded samples for ``split`` (MIMIC-CXR + VinDr-CXR; VinDr repeated on the train split),
    and a summary ``{"counts": rows per source before oversampling, "vindr_factor": k}``. ``sources`` picks the
    tables (stages after detection use MIMIC-CXR only); ``limit`` caps each source at its share; ``frontal_only``
    drops lateral MIMIC-CXR views (the reference trains on frontal images only).

    The train split's blocks come in a seeded random order; the workers add a local shuffle per epoch (cheaper
    than a global all-to-all shuffle, and different every epoch). ``cache_rows`` keeps the read (still
    PNG-compressed) rows in the object store, so later epochs skip listing and reading the files; decoding and
    augmentation still run every epoch."""
    import ray.data

    files, counts = {}, {}
    for source in TRAIN_SOURCES:
        paths = table_paths(tables, source, split) if source in sources else []
        mimic = source == "mimic_cxr"
        counts[source] = _count_rows(paths, exclude_ids if mimic else None, 0, frontal_only and mimic) if paths else 0
        if paths:
            files[source] = [{"path": p, "source": source} for p in paths]
    if not files:
        raise FileNotFoundError(f"no {' or '.join(sources)} tables for split {split!r} under {tables}/tables")
    factor = oversampling_factor(counts["mimic_cxr"], counts["vindr_cxr"], vindr_factor) if split == "train" else 1
    # file listing on the driver and one read task per file: Ray Data's generic Parquet datasource costs seconds of
    # fixed overhead per execution here, which every epoch would pay again
    kwargs = {"columns": [c for c in COLUMNS if c != "source"], "exclude_ids": sorted(exclude_ids or ()),
              "factors": {"vindr_cxr": factor}, "frontal_only": frontal_only}
    parts = [ray.data.from_items(items).map_batches(read_table_file, batch_size=1, batch_format="pyarrow", fn_kwargs=kwargs)
             for items in files.values()]
    if limit:  # each source its share, so a capped val set still holds every kind of supervision
        parts = [ds.limit(math.ceil(limit / len(parts))) for ds in parts]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if cache_rows:
        ds = ds.materialize()
    if split == "train":
        ds = ds.randomize_block_order(seed=seed)
    ds = ds.map_batches(encode_batch, fn_kwargs={"size": size, "augment": augment if split == "train" else None,
                                                 "seed": seed if reproducible_augment else None},
                        batch_format="pyarrow", batch_size=8)
    return ds, {"counts": counts, "vindr_factor": factor}


def epoch_steps(n_samples: int, global_batch: int) -> int:
    return max(1, math.ceil(n_samples / global_batch))
