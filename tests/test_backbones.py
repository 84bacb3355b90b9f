"""Pretrained parts load from local Hugging Face folders only: tiny CLIP / GPT-2 + offline-trained tokenizers."""
from __future__ import annotations

import socket

import pytest
import torch

from chex_model.backbones import random_backbones, save_backbones, train_tokenizers
from chex_model.chex import ChEX
from chex_model.corpus import default_corpus
from model_support import tiny_config


@pytest.fixture(scope="module")
def tokenizers():
    return train_tokenizers(default_corpus(studies=60), 600)


def test_tokenizers_are_deterministic_and_round_trip(tokenizers) -> None:
    clip_tok, lm_tok = tokenizers
    again = train_tokenizers(default_corpus(studies=60), 600)
    text = "Small right pleural effusion."
    assert clip_tok(text)["input_ids"] == again[0](text)["input_ids"]
    ids = clip_tok(text)["input_ids"]
    assert ids[0] == clip_tok.bos_token_id and ids[-1] == clip_tok.eos_token_id  # CLIP pools at the end token
    assert lm_tok.decode(lm_tok(text)["input_ids"]) == text
    assert lm_tok.bos_token_id == lm_tok.eos_token_id == lm_tok.pad_token_id


def test_build_from_local_folders_without_network(tokenizers, tmp_path, monkeypatch) -> None:
    cfg = tiny_config()
    torch.manual_seed(0)
    original = random_backbones(cfg, *tokenizers)
    save_backbones(original, tmp_path / "clip", tmp_path / "gpt2")

    def refuse(self, address):  # any non-loopback connection attempt fails the test
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = ChEX.build(cfg, clip_dir=tmp_path / "clip", lm_dir=tmp_path / "gpt2").eval()
    for mine, theirs in ((model.image_encoder.clip, original.vision), (model.prompt_encoder.text, original.text),
                         (model.generator.lm, original.lm)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ChEX.build(cfg, clip_dir=tmp_path / "nothing", lm_dir=tmp_path / "gpt2")
    with pytest.raises(ValueError):
        ChEX.build(cfg, clip_dir=tmp_path / "clip")


def test_prompt_embedding_does_not_depend_on_padding(tokenizers) -> None:
    model = ChEX.build(tiny_config(), corpus=default_corpus(studies=60)).eval()
    enc = model.prompt_encoder
    long = "Moderate right pleural effusion with adjacent atelectasis"
    alone = enc._encode(["Left lung"])
    together = enc._encode(["Left lung", long])
    assert torch.equal(alone["Left lung"], together["Left lung"])  # bit for bit: no padding to the longer text
    assert not torch.allclose(together["Left lung"], together[long])
