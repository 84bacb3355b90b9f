"""Every malformed checkpoint folder is one CheckpointError naming the folder and the problem, and `chex query`
prints it as one line with a non-zero exit (no traceback); a sound copy still loads."""
from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from chex_model.checkpoint import CheckpointError
from chex_model.chex import ChEX
from pipelines.cli import main


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _write_config(folder: Path, meta: object) -> None:
    (folder / "config.json").write_text(json.dumps(meta))


def _wrong_shapes(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    name = next(k for k, v in weights.items() if v.dim() == 2)
    weights[name] = torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])
    save_file(weights, folder / "model.safetensors")


def _missing_tensor(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    weights.pop(sorted(weights)[0])
    save_file(weights, folder / "model.safetensors")


def _pickle_weights(folder: Path) -> None:
    with open(folder / "model.safetensors", "wb") as fh:
        pickle.dump({"w": [1, 2, 3]}, fh)


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "config not JSON": (lambda f: (f / "config.json").write_text("{not json"), "config.json is not JSON"),
    "wrong format number": (lambda f: _write_config(f, {**_config(f), "format": 99}), "format 99 is not 2"),
    "empty config": (lambda f: _write_config(f, {}), "no format number"),
    "config a list": (lambda f: _write_config(f, [1, 2]), "no format number"),
    "null section": (lambda f: _write_config(f, {**_config(f), "chex": None}), "'chex' section"),
    "unknown config key": (lambda f: _write_config(f, {**_config(f), "chex": {"d_modell": 3}}), "unknown key"),
    "wrong shapes": (_wrong_shapes, "does not fit the config"),
    "missing tensor": (_missing_tensor, "does not fit the config"),
    "pickle weights": (_pickle_weights, "not a safetensors file"),
    "truncated weights": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:50]),
                          "not a safetensors file"),
    "missing lm folder": (lambda f: shutil.rmtree(f / "lm"), "missing lm/"),
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), "missing model.safetensors"),
    "broken lm config": (lambda f: (f / "lm" / "config.json").write_text("[]"), "lm/"),
    "broken calibration": (lambda f: (f / "presence_calibration.json").write_text('["x"]'), "presence_calibration"),
}


@pytest.fixture
def broken(tiny_model_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    damage, message = BREAKS[request.param]
    damage(folder)
    return folder, message


@pytest.mark.parametrize("broken", sorted(BREAKS), indirect=True)
def test_a_broken_checkpoint_is_one_clear_error(broken: tuple[Path, str]) -> None:
    folder, message = broken
    with pytest.raises(CheckpointError) as info:
        ChEX.from_pretrained(folder)
    text = str(info.value)
    assert text.startswith(f"{folder} is not a loadable ChEX checkpoint: ") and message in text and "\n" not in text


@pytest.mark.parametrize("broken", sorted(BREAKS), indirect=True)
def test_cli_prints_a_broken_checkpoint_in_one_line(broken: tuple[Path, str], tmp_path: Path, capsys) -> None:
    folder, message = broken
    image = tmp_path / "x.png"
    Image.fromarray(np.full((40, 50), 90, np.uint8)).save(image)
    assert main(["query", str(image), "--prompt", "Left lung", "--model", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_an_intact_copy_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    assert isinstance(ChEX.from_pretrained(tmp_path / "model"), ChEX)
