"""The checkpoint folder's layout and its validation: every way a folder can fail to load is one CheckpointError.

A folder holds ``config.json`` (format number + the model config), ``model.safetensors``, and the backbones'
configs and tokenizers in ``clip/`` and ``lm/``. Users point ``--model`` at folders they copied, trained or
downloaded; a wrong one must say what is wrong in one line, not surface a library's traceback.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from chex_model.config import ChexConfig

CONFIG_FILE, WEIGHTS_FILE, CLIP_DIR, LM_DIR = "config.json", "model.safetensors", "clip", "lm"
FORMAT_VERSION = 2
# Settings added after a format: what its checkpoints were trained and run with, filled in where the config lacks them
# (format 2 added the reference's defaults for these, docs/fidelity.md)
FORMAT_DEFAULTS: dict[int, dict[str, dict[str, object]]] = {
    1: {"detector": {"projector_dropout": False, "feature_norm": "sum", "box_text_fusion": "prompt"},
        "generator": {"pretrain_repeats": 1}, "loss": {"anatomy_cls": "per_positive"}},
}
_SAFETENSORS_MAGIC_MAX_HEADER = 100_000_000  # a real header is JSON of a few hundred kB at most


class CheckpointError(ValueError):
    """A folder that is not a loadable ChEX checkpoint; the message names the folder and the problem."""

    def __init__(self, directory: Path, problem: str) -> None:
        self.directory, self.problem = directory, problem
        super().__init__(f"{directory} is not a loadable ChEX checkpoint: {problem}")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_weights_file(src: Path) -> None:
    """safetensors starts with an 8-byte little-endian header length and a JSON header: anything else (a pickle,
    a zip from torch.save, a cut download) is refused before any parser sees it."""
    path = src / WEIGHTS_FILE
    with open(path, "rb") as fh:
        head = fh.read(9)
    size = path.stat().st_size
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if len(head) < 9 or head[8:9] != b"{" or not 0 < n <= min(size - 8, _SAFETENSORS_MAGIC_MAX_HEADER):
        raise CheckpointError(src, f"{WEIGHTS_FILE} is not a safetensors file (nothing is unpickled: re-save the "
                                   "weights with safetensors)")


def read_config(src: Path) -> ChexConfig:
    """The model config of a checkpoint folder, after checking that every part the loader needs is there."""
    if not src.is_dir():
        raise CheckpointError(src, "no such folder" if not src.exists() else "not a folder")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (src / name).is_file()]
    missing += [f"{name}/" for name in (CLIP_DIR, LM_DIR) if not (src / name).is_dir()]
    if missing:
        raise CheckpointError(src, f"missing {', '.join(missing)}")
    try:
        meta = json.loads((src / CONFIG_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(src, f"{CONFIG_FILE} is not JSON ({_one_line(exc)})") from exc
    if not isinstance(meta, dict) or "format" not in meta:
        raise CheckpointError(src, f"{CONFIG_FILE} has no format number (expected {{\"format\": {FORMAT_VERSION}, "
                                   "\"chex\": {...}})")
    if meta["format"] != FORMAT_VERSION and meta["format"] not in FORMAT_DEFAULTS:
        raise CheckpointError(src, f"checkpoint format {meta['format']!r} is not {FORMAT_VERSION} (or an earlier "
                                   f"one: {', '.join(map(str, sorted(FORMAT_DEFAULTS)))})")
    if not isinstance(meta.get("chex"), dict):
        raise CheckpointError(src, f"the 'chex' section of {CONFIG_FILE} is {type(meta.get('chex')).__name__}, "
                                   "not a mapping")
    _check_weights_file(src)
    with load_errors(src, f"the 'chex' section of {CONFIG_FILE}"):
        return ChexConfig.from_dict(with_format_defaults(meta["chex"], meta["format"]))


def with_format_defaults(chex: dict, fmt: int) -> dict:
    """``chex`` with the settings of format ``fmt``'s era filled in where a section lacks them."""
    out = dict(chex)
    for section, values in FORMAT_DEFAULTS.get(fmt, {}).items():
        if isinstance(out.get(section, {}), dict):
            out[section] = {**values, **out.get(section, {})}
    return out


@contextmanager
def load_errors(src: Path, part: str) -> Iterator[None]:
    """Turn what a library raises on a malformed ``part`` of ``src`` into a one-line CheckpointError."""
    try:
        yield
    except CheckpointError:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(src, f"{part}: {_one_line(exc)}") from exc
