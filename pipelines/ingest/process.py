"""The per-record work of the ingest job: decode + resize the image, carry boxes, parse report and scene graph.

Runs inside Ray Data tasks. Bad data is turned into a Reject with the offending path and a reason; a record is
only lost when its image cannot be used, and then the rejects table says so. Anything else is a bug and fails the
job (:class:`RecordFailed`).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.ingest.checks import MISSING
from preprocessing.archive import read_member
from preprocessing.box_geometry import box_inside_image, clip_xyxy, xyxy_to_stored_cxcywh
from preprocessing.chest_imagenome import SceneGraphError, parse_scene_graph
from preprocessing.image_io import ImageDecodeError, encode_png, load_resized
from preprocessing.records import PixelBox, RawRecord, Reject
from preprocessing.sentences import report_sentences_batch
from preprocessing.vindr_cxr import fuse_boxes

ASPECT_TOLERANCE = 0.01


def _inside(rec: RawRecord, boxes: list[PixelBox], w: int, h: int, what: str, rejects: list[Reject]) -> list[PixelBox]:
    """Boxes within the image (a few pixels of slack); the others become rejects."""
    valid = []
    for b in boxes:
        if box_inside_image(b.x1, b.y1, b.x2, b.y2, w, h):
            valid.append(b)
        else:
            rejects.append(Reject(rec.source, rec.source_path, "box",
                                  f"{what} box '{b.name}' ({b.x1:.1f}, {b.y1:.1f}, {b.x2:.1f}, {b.y2:.1f}) lies outside "
                                  f"the {w}x{h} image", rec.sample_id))
    return valid


def _stored_boxes(rec: RawRecord, boxes: list[PixelBox], w: int, h: int, what: str,
                  rejects: list[Reject]) -> list[dict[str, Any]]:
    """Validate, clip and normalize; boxes outside the image or the stored crop become rejects."""
    valid = _inside(rec, boxes, w, h, what, rejects)
    if not valid:
        return []
    xyxy = clip_xyxy(np.array([[b.x1, b.y1, b.x2, b.y2] for b in valid], dtype=np.float64), w, h)
    stored, keep = xyxy_to_stored_cxcywh(xyxy, w, h)
    out = []
    for b, (cx, cy, bw, bh), k in zip(valid, stored.tolist(), keep.tolist(), strict=True):
        if k:
            out.append({"name": b.name, "cx": cx, "cy": cy, "w": bw, "h": bh})
        else:
            rejects.append(Reject(rec.source, rec.source_path, "box",
                                  f"{what} box '{b.name}' falls outside the stored centre crop", rec.sample_id))
    return out


def _modality_rejects(rec: RawRecord, modality: str | None, allowed: Sequence[str]) -> list[Reject]:
    """A DICOM of a modality outside ``allowed`` is a reject; one without the tag is kept, with a note."""
    if modality is None or not allowed:
        return []
    if modality == "":
        return [Reject(rec.source, rec.source_path, "image", "DICOM has no Modality tag; kept as a radiograph",
                       rec.sample_id)]
    if modality not in allowed:
        return [Reject(rec.source, rec.source_path, "image", f"DICOM Modality {modality!r} is not a radiograph "
                       f"(allowed_modalities: {', '.join(allowed)})", rec.sample_id)]
    return []


def process_record(rec: RawRecord, image_size: int, equalize_dicom: bool, sentences: list[str] | None,
                   allow_truncated: bool = False, allowed_modalities: Sequence[str] = ("CR", "DX"),
                   ) -> tuple[dict[str, Any] | None, list[Reject]]:
    """One output row (or None when the image is unreadable or not a radiograph) and the rejects found on the way."""
    try:
        image = load_resized(Path(rec.image_path), image_size, equalize_dicom=equalize_dicom,
                             allow_truncated=allow_truncated)
    except FileNotFoundError:  # listed by the scan, gone since: a missing image, not a corrupt one
        return None, [Reject(rec.source, rec.source_path, MISSING, "image file not found", rec.sample_id)]
    except (ImageDecodeError, OSError) as exc:
        return None, [Reject(rec.source, rec.source_path, "image", str(exc), rec.sample_id)]
    rejects = _modality_rejects(rec, image.modality, allowed_modalities)
    if rejects and image.modality:
        return None, rejects
    pixels, w, h = image.pixels, image.width, image.height
    if min(w, h) <= 0 or (rec.expected_size and min(rec.expected_size) <= 0):
        return None, [Reject(rec.source, rec.source_path, "image", f"non-positive size {w}x{h} / {rec.expected_size}",
                             rec.sample_id)]
    # Annotations are in the metadata's pixel frame. A resized copy of the images (common for MIMIC-CXR-JPG) keeps
    # the aspect ratio, and normalized boxes depend only on that, so box math runs in the metadata frame.
    fw, fh = rec.expected_size or (w, h)
    if abs(fw / fh - w / h) > ASPECT_TOLERANCE * (w / h):
        return None, [Reject(rec.source, rec.source_path, "image",
                             f"image is {w}x{h} but its metadata says {fw}x{fh} (different aspect ratio)", rec.sample_id)]
    boxes = fuse_boxes(_inside(rec, rec.boxes, fw, fh, "finding", rejects), fw, fh) if rec.fuse_boxes else rec.boxes
    row: dict[str, Any] = {
        "source": rec.source, "split": rec.split, "sample_id": rec.sample_id, "image_id": rec.image_id,
        "patient_id": rec.patient_id, "study_id": rec.study_id, "view_position": rec.view_position,
        "source_path": rec.source_path, "orig_width": w, "orig_height": h, "image_size": image_size,
        "image_png": encode_png(pixels), "boxes": _stored_boxes(rec, boxes, fw, fh, "finding", rejects),
        "labels": [{"name": k, "value": v} for k, v in sorted(rec.labels.items())],
        "report_sentences": sentences or [], "region_boxes": [], "region_labels": [], "region_phrases": [],
        "grounded_phrases": [],
    }
    if rec.scene_graph is not None:
        where = rec.scene_graph_source_path or rec.scene_graph[1]
        try:
            sg = parse_scene_graph(read_member(*rec.scene_graph), fw, fh)
        except Exception as exc:  # noqa: BLE001 - malformed JSON shapes raise arbitrary types; the image stays
            reason = str(exc) if isinstance(exc, SceneGraphError) else f"unreadable scene graph ({type(exc).__name__}: {exc})"
            rejects.append(Reject(rec.source, where, "scene_graph", reason, rec.sample_id))
        else:
            rejects += [Reject(rec.source, where, "scene_graph", f"anatomy box {d}", rec.sample_id) for d in sg.dropped]
            row["region_boxes"] = _stored_boxes(rec, sg.boxes, fw, fh, "anatomy", rejects)
            row["region_labels"] = [{"region": r, "finding": f, "value": v} for r, f, v in sorted(sg.labels)]
            row["region_phrases"] = [{"region": r, "phrases": p} for r, p in sorted(sg.phrases.items())]
    for g in rec.grounded_phrases:   # their boxes are the record's finding boxes too
        stored = _stored_boxes(rec, g.boxes, fw, fh, f"phrase '{g.phrase}'", rejects)
        if stored:
            row["grounded_phrases"].append({"phrase": g.phrase, "category": g.category, "boxes": stored})
            row["boxes"] += stored
    return row, rejects


class RecordFailed(RuntimeError):
    """An unexpected exception in per-record code: a bug, not bad data (bad data is a Reject). It fails the job
    and names the record; the original exception and its traceback are chained."""


def process_or_fail(rec: RawRecord, image_size: int, equalize_dicom: bool, sentences: list[str] | None,
                    allow_truncated: bool = False, allowed_modalities: Sequence[str] = ("CR", "DX"),
                    ) -> tuple[dict[str, Any] | None, list[Reject]]:
    """:func:`process_record`, with any exception it did not turn into a Reject re-raised as RecordFailed."""
    try:
        return process_record(rec, image_size, equalize_dicom, sentences, allow_truncated, allowed_modalities)
    except Exception as exc:
        raise RecordFailed(f"{rec.source} record {rec.source_path}: {type(exc).__name__}: {exc}") from exc


def read_reports(records: list[RawRecord]) -> tuple[list[list[str] | None], list[Reject]]:
    """Sentences per record (None without a report); the batch's reports are split in one spaCy pass."""
    texts: dict[tuple[str, str], str] = {}
    first: dict[tuple[str, str], RawRecord] = {}
    rejects = []
    for rec in records:
        if rec.report is None or rec.report in first:
            continue
        first[rec.report] = rec
        try:
            texts[rec.report] = read_member(*rec.report).decode("utf-8")
        except (OSError, KeyError, UnicodeDecodeError, zipfile.BadZipFile, zlib.error) as exc:
            rejects.append(Reject(rec.source, rec.report_source_path or rec.report[1], "report",
                                  f"unreadable report: {type(exc).__name__}: {exc}", rec.study_id or ""))
    parsed = dict(zip(texts, report_sentences_batch(list(texts.values())), strict=True))
    for key, sentences in parsed.items():
        if not sentences:
            rec = first[key]
            rejects.append(Reject(rec.source, rec.report_source_path or key[1], "report",
                                  "report has no findings/impression sentences", rec.study_id or ""))
    return [parsed.get(r.report) if r.report else None for r in records], rejects


def row_digest(row: dict[str, Any]) -> str:
    """Content hash of one output row, independent of file layout and row order."""
    h = hashlib.sha256(row["image_png"])
    h.update(json.dumps({k: v for k, v in row.items() if k != "image_png"}, sort_keys=True).encode())
    return h.hexdigest()
