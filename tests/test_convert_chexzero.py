"""`chex convert chexzero`: an OpenAI-format CLIP state dict becomes a Hugging Face CLIPModel folder that computes the
same image and text features as the OpenAI architecture, written out here from its published definition."""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import Tensor, nn
from transformers import CLIPModel, GPT2LMHeadModel, PreTrainedTokenizerFast

from chex_model.backbones import gpt2_config
from chex_model.chex import ChEX
from chex_model.config import ClipGeometry
from chex_model.openai_clip import read_openai_state_dict
from model_support import tiny_config
from pipelines.cli import main

# vision 3 heads and text 2 heads (OpenAI: width // 64), so the q/k/v split is checked across heads
VISION = dict(width=192, layers=2, patch=8, image=32)
TEXT = dict(width=128, layers=2, context=16, vocab=100)
EMBED = 24
BOS, EOT = TEXT["vocab"] - 2, TEXT["vocab"] - 1  # OpenAI: the end token is the largest id


# ---- OpenAI CLIP (Radford et al. 2021), sequence-first like the original, with its parameter names ----------------
class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mask: Tensor | None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(),
                                             c_proj=nn.Linear(4 * width, width)))
        self.mask = mask  # a plain attribute, as in OpenAI's model: not part of the state dict

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, mask: Tensor | None = None) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, width // 64, mask) for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, width: int, layers: int, patch: int, image: int, embed: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty((image // patch) ** 2 + 1, width))
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer = Transformer(width, layers)
        self.proj = nn.Parameter(torch.empty(width, embed))

    def forward(self, images: Tensor) -> Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (N, grid^2, width)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAIClip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w, ctx = TEXT["width"], TEXT["context"]
        self.visual = VisionTransformer(VISION["width"], VISION["layers"], VISION["patch"], VISION["image"], EMBED)
        causal = torch.full((ctx, ctx), float("-inf")).triu(1)
        self.transformer = Transformer(w, TEXT["layers"], causal)
        self.token_embedding = nn.Embedding(TEXT["vocab"], w)
        self.positional_embedding = nn.Parameter(torch.empty(ctx, w))
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.empty(w, EMBED))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def encode_image(self, images: Tensor) -> Tensor:
        return self.visual(images)

    def encode_text(self, ids: Tensor) -> Tensor:  # ids (N, context)
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.transformer(x.transpose(0, 1)).transpose(0, 1))
        return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


def _randomize(model: nn.Module, seed: int) -> None:
    """Every parameter random and of a sensible scale: LayerNorm gains around 1, all else around 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def _word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the whole 100-id vocabulary whose start / end tokens are its two largest ids, as
    OpenAI CLIP's are; the same one serves the small GPT-2."""
    words = "left right lung pleural effusion heart cardiac silhouette consolidation no normal enlarged".split()
    vocab = {t: i for i, t in enumerate(["[UNK]", *words, *(f"w{i}" for i in range(BOS - len(words) - 1))])}
    vocab.update({"<|startoftext|>": BOS, "<|endoftext|>": EOT})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", BOS), ("<|endoftext|>", EOT)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="[UNK]")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The reference model, its torch.save-d state dict converted by the CLI (with a tokenizer), and the folders."""
    root = tmp_path_factory.mktemp("chexzero")
    reference = OpenAIClip().eval()
    _randomize(reference, 0)
    torch.save(reference.state_dict(), root / "clip.pt")
    tok = _word_tokenizer()
    tok.save_pretrained(root / "tokenizer")
    out = root / "chexzero"
    assert main(["convert", "chexzero", "--checkpoint", str(root / "clip.pt"), "--out", str(out),
                 "--tokenizer", str(root / "tokenizer")]) == 0
    return reference, tok, root, out


def _token_rows(lengths: tuple[int, ...]) -> Tensor:
    """Start token, random word ids, end token, zero padding up to the context length."""
    g = torch.Generator().manual_seed(1)
    rows = torch.zeros(len(lengths), TEXT["context"], dtype=torch.long)
    for i, n in enumerate(lengths):
        rows[i, : n + 2] = torch.tensor([BOS, *torch.randint(1, BOS, (n,), generator=g).tolist(), EOT])
    return rows


@torch.no_grad()
def test_converted_folder_computes_the_openai_features(converted) -> None:
    reference, _, _, out = converted
    hf = CLIPModel.from_pretrained(out).eval()
    images = torch.randn(3, 3, VISION["image"], VISION["image"], generator=torch.Generator().manual_seed(2))
    ids = _token_rows((3, 11))
    image = hf.get_image_features(pixel_values=images).pooler_output
    torch.testing.assert_close(image, reference.encode_image(images), atol=1e-5, rtol=0)
    text = hf.get_text_features(input_ids=ids).pooler_output  # pooled at the first end token, OpenAI at the argmax
    torch.testing.assert_close(text, reference.encode_text(ids), atol=1e-5, rtol=0)
    assert not torch.allclose(text[0], text[1])
    assert hf.logit_scale.item() == reference.logit_scale.item()
    cfg = hf.config.text_config
    assert (cfg.eos_token_id, cfg.bos_token_id, cfg.hidden_act) == (EOT, BOS, "quick_gelu")


def test_chex_builds_from_the_converted_folder(converted) -> None:
    """ChEX's image encoder and prompt encoder, fed from the converted folder, give the OpenAI model's features."""
    reference, tok, root, out = converted
    cfg = tiny_config()
    geometry = ClipGeometry(image_size=VISION["image"], patch_size=VISION["patch"], vision_width=VISION["width"],
                            vision_layers=VISION["layers"], vision_heads=VISION["width"] // 64, text_width=TEXT["width"],
                            text_layers=TEXT["layers"], text_heads=TEXT["width"] // 64, text_vocab=TEXT["vocab"],
                            text_context=TEXT["context"])
    cfg = dataclasses.replace(cfg, d_model=EMBED, clip=geometry, image=dataclasses.replace(cfg.image, conv_widths=[]))
    torch.manual_seed(0)
    GPT2LMHeadModel(gpt2_config(cfg.lm, tok)).save_pretrained(root / "gpt2")
    tok.save_pretrained(root / "gpt2")
    model = ChEX.build(cfg, clip_dir=out, lm_dir=root / "gpt2").eval()
    images = torch.randn(2, 1, VISION["image"], VISION["image"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, _, glob = model.image_encoder(images)
        torch.testing.assert_close(glob, reference.encode_image(images.expand(-1, 3, -1, -1)), atol=1e-5, rtol=0)
        prompt = "Left pleural effusion"
        ids = torch.zeros(1, TEXT["context"], dtype=torch.long)
        row = tok(prompt)["input_ids"]
        ids[0, : len(row)] = torch.tensor(row)
        torch.testing.assert_close(model.prompt_encoder.encode([prompt]), reference.encode_text(ids), atol=1e-5, rtol=0)


def test_wrapped_prefixed_state_dict_reads_like_the_plain_one(converted) -> None:
    """A {"state_dict": ...} wrapper, DataParallel's "module." prefix and OpenAI's bookkeeping scalars are undone."""
    reference, _, root, _ = converted
    plain = reference.state_dict()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in plain.items()}, "epoch": 3}
    wrapped["state_dict"].update(input_resolution=torch.tensor(VISION["image"]), context_length=TEXT["context"])
    torch.save(wrapped, root / "wrapped.pt")
    read = read_openai_state_dict(root / "wrapped.pt")
    assert read.keys() == plain.keys() and all(torch.equal(read[k], plain[k]) for k in plain)


def _cli_error(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, (code, err)
    return err


def _bad_checkpoints(reference: nn.Module) -> dict[str, tuple[object, str]]:
    """File name -> (what torch.save writes, a fragment the one-line error must contain)."""
    state = reference.state_dict()
    lacking = {k: v for k, v in state.items() if k != "visual.ln_post.weight"}
    extra = {**state, "visual.attnpool.weight": torch.zeros(2)}
    return {"list.pt": ([1, 2], "not a state dict"), "lacking.pt": (lacking, "visual.ln_post.weight"),
            "extra.pt": (extra, "visual.attnpool.weight"), "object.pt": ({"a": QuickGELU()}, "QuickGELU")}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_bad_input_is_one_line_on_stderr(converted, capsys) -> None:
    reference, _, root, _ = converted
    out = str(root / "bad_out")
    err = _cli_error(["convert", "chexzero", "--checkpoint", str(root / "missing.pt"), "--out", out], capsys)
    assert "does not exist" in err
    for name, (content, fragment) in _bad_checkpoints(reference).items():
        torch.save(content, root / name)
        assert fragment in _cli_error(["convert", "chexzero", "--checkpoint", str(root / name), "--out", out], capsys)
    (root / "text.pt").write_text("not a checkpoint")
    assert "weights_only" in _cli_error(["convert", "chexzero", "--checkpoint", str(root / "text.pt"), "--out", out],
                                        capsys)
    torch.jit.script(nn.Linear(2, 2)).save(str(root / "jit.pt"))
    assert "TorchScript" in _cli_error(["convert", "chexzero", "--checkpoint", str(root / "jit.pt"), "--out", out], capsys)
    (root / "empty").mkdir()
    assert "no usable tokenizer" in _cli_error(["convert", "chexzero", "--checkpoint", str(root / "clip.pt"), "--out", out,
                                                "--tokenizer", str(root / "empty")], capsys)
    assert not (root / "bad_out").exists()


def test_out_folder_and_tokenizer_note(converted, capsys) -> None:
    """A non-empty --out needs --force; without --tokenizer the output says clip_dir still needs tokenizer files."""
    _, _, root, out = converted
    argv = ["convert", "chexzero", "--checkpoint", str(root / "clip.pt"), "--out", str(out)]
    assert "--force" in _cli_error(argv, capsys)
    assert main([*argv, "--force"]) == 0
    printed = capsys.readouterr().out
    assert "3 heads" in printed and "tokenizer" in printed and "--tokenizer" in printed
