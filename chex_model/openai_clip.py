"""OpenAI-format CLIP weights (CheXzero's `best_64_5e-05_original_22000_0.864.pt`) -> a Hugging Face `CLIPModel`
folder, the form `chex_model.backbones.load_backbones` reads.

The OpenAI state dict carries no config, so the geometry comes from tensor shapes and OpenAI's fixed rules (64-wide
heads, 4x MLP, QuickGELU, LayerNorm eps 1e-5). Loading never unpickles objects (`weights_only=True`), and every
tensor is either mapped or one of the three bookkeeping scalars some OpenAI exports carry.

Text pooling: OpenAI pools the text tower at ``argmax(token ids)``, i.e. at the end-of-text token, which is the
largest id of its vocabulary (49407 of 49408). Hugging Face's `CLIPTextTransformer` pools at the first position of
``eos_token_id`` unless that id is 2 (a legacy mode that takes the argmax). We set ``eos_token_id`` to the largest
id, so the two agree on every sequence that contains the end token: torch's argmax returns the first maximum, and
OpenAI's tokenizer pads with 0 while Hugging Face's CLIP tokenizer pads with the end token itself.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, PreTrainedTokenizerBase

IGNORED_KEYS = frozenset({"input_resolution", "context_length", "vocab_size"})  # scalars in some OpenAI exports
WRAPPER_KEYS = ("state_dict", "model_state_dict")
PREFIX = "module."  # DataParallel
HEAD_WIDTH = 64  # OpenAI CLIP: heads = width // 64 in both towers
VISION_BLOCKS, TEXT_BLOCKS = "visual.transformer.resblocks.", "transformer.resblocks."


class OpenAIClipError(ValueError):
    """A checkpoint that is not a usable OpenAI CLIP state dict; the message is one line."""


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _reason(exc: Exception) -> str:
    """One line of a torch.load failure: the weights-only unpickler's own reason (e.g. the refused class) if any."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    line = found.group(1) if found else (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line.strip().split('. ')[0][:200]}"


def read_openai_state_dict(path: Path | str) -> dict[str, Tensor]:
    """Tensors of a ``torch.save``-d state dict (optionally wrapped under "state_dict"/"model_state_dict", keys
    optionally prefixed "module."). TorchScript archives are refused: loading one compiles code from the file."""
    path = Path(path)
    if _is_torchscript(path):
        raise OpenAIClipError(
            f"{path} is a TorchScript archive (an OpenAI jit=True export), which is not loaded here because that runs "
            "code from the file; where you trust it, run torch.save(torch.jit.load(path).state_dict(), 'plain.pt') "
            "and convert plain.pt")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on foreign files
        reason = _reason(exc)
        raise OpenAIClipError(f"{path} is not a state dict that torch.load(weights_only=True) reads ({reason})") from None
    return _unwrap(raw, path)


def _unwrap(raw: object, path: Path) -> dict[str, Tensor]:
    if isinstance(raw, dict):
        for key in WRAPPER_KEYS:
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw:
        raise OpenAIClipError(f"{path} holds a {type(raw).__name__}, not a state dict (a dict of tensors)")
    state = {(k[len(PREFIX):] if isinstance(k, str) and k.startswith(PREFIX) else k): v for k, v in raw.items()}
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor)) and k not in IGNORED_KEYS]
    if bad:
        raise OpenAIClipError(f"{path}: entries that are not named tensors: {_short(bad)}")
    return {k: v for k, v in state.items() if k not in IGNORED_KEYS}


def _need(state: dict[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise OpenAIClipError(f"not an OpenAI CLIP state dict: missing {key}")
    return state[key]


def _block_count(state: dict[str, Tensor], prefix: str) -> int:
    found = {k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)}
    indices = {int(i) for i in found if i.isdigit()}
    if not indices or indices != set(range(len(indices))):
        raise OpenAIClipError(f"not an OpenAI CLIP state dict: {prefix}<i> blocks are {sorted(indices) or 'missing'}")
    return len(indices)


def _heads(width: int, tower: str) -> int:
    heads = width // HEAD_WIDTH
    if heads < 1 or width % heads:
        raise OpenAIClipError(f"{tower} width {width} does not split into OpenAI's width // {HEAD_WIDTH} attention heads")
    return heads


def _vision_config(state: dict[str, Tensor], projection_dim: int) -> dict:
    conv = _need(state, "visual.conv1.weight")  # (width, channels, patch, patch)
    width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
    grid = round((_need(state, "visual.positional_embedding").shape[0] - 1) ** 0.5)
    if grid * grid + 1 != state["visual.positional_embedding"].shape[0]:
        raise OpenAIClipError("visual.positional_embedding is not 1 + a square grid of patches")
    return dict(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=_block_count(state, VISION_BLOCKS),
        num_attention_heads=_heads(width, "vision"), num_channels=channels, image_size=grid * patch, patch_size=patch,
        projection_dim=projection_dim, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )


def _text_config(state: dict[str, Tensor], projection_dim: int) -> dict:
    width = _need(state, "ln_final.weight").shape[0]
    vocab = _need(state, "token_embedding.weight").shape[0]
    eot = vocab - 1  # OpenAI's end-of-text token is its largest id; the start token is the one before it
    return dict(
        vocab_size=vocab, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=_block_count(state, TEXT_BLOCKS),
        num_attention_heads=_heads(width, "text"), max_position_embeddings=_need(state, "positional_embedding").shape[0],
        projection_dim=projection_dim, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        eos_token_id=eot, bos_token_id=eot - 1, pad_token_id=eot,
    )


def clip_config_from_openai(state: dict[str, Tensor]) -> CLIPConfig:
    """The `CLIPConfig` of an OpenAI CLIP state dict, from its tensor shapes (module docstring: pooling ids)."""
    projection_dim = _need(state, "text_projection").shape[1]
    scale = float(_need(state, "logit_scale"))
    return CLIPConfig(
        text_config=_text_config(state, projection_dim), vision_config=_vision_config(state, projection_dim),
        projection_dim=projection_dim, logit_scale_init_value=scale,
    )


def _block(src: str, dst: str) -> dict[str, tuple[str, str | None]]:
    """One residual attention block: HF name -> (OpenAI name, how: None = as is, "q"/"k"/"v" = that third)."""
    out: dict[str, tuple[str, str | None]] = {}
    for part in ("weight", "bias"):
        for which in "qkv":
            out[f"{dst}.self_attn.{which}_proj.{part}"] = (f"{src}.attn.in_proj_{part}", which)
        for theirs, ours in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[f"{dst}.{ours}.{part}"] = (f"{src}.{theirs}.{part}", None)
    return out


def _name_map(config: CLIPConfig) -> dict[str, tuple[str, str | None]]:
    """Every HF `CLIPModel` tensor -> its OpenAI source; "T" marks the ``x @ proj`` matrices that become Linear weights."""
    names: dict[str, tuple[str, str | None]] = {
        "logit_scale": ("logit_scale", None),
        "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", None),
        "vision_model.embeddings.class_embedding": ("visual.class_embedding", None),
        "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", None),
        "visual_projection.weight": ("visual.proj", "T"),
        "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", None),
        "text_model.embeddings.position_embedding.weight": ("positional_embedding", None),
        "text_projection.weight": ("text_projection", "T"),
    }
    for part in ("weight", "bias"):
        names[f"vision_model.pre_layrnorm.{part}"] = (f"visual.ln_pre.{part}", None)
        names[f"vision_model.post_layernorm.{part}"] = (f"visual.ln_post.{part}", None)
        names[f"text_model.final_layer_norm.{part}"] = (f"ln_final.{part}", None)
    for i in range(config.vision_config.num_hidden_layers):
        names.update(_block(f"{VISION_BLOCKS}{i}", f"vision_model.encoder.layers.{i}"))
    for i in range(config.text_config.num_hidden_layers):
        names.update(_block(f"{TEXT_BLOCKS}{i}", f"text_model.encoder.layers.{i}"))
    return names


def _take(tensor: Tensor, how: str | None) -> Tensor:
    if how == "T":
        return tensor.t().contiguous()
    if how in ("q", "k", "v"):
        return tensor.chunk(3, dim=0)["qkv".index(how)].contiguous()
    return tensor.clone()


def openai_to_hf_state_dict(state: dict[str, Tensor], config: CLIPConfig) -> dict[str, Tensor]:
    """The `CLIPModel` state dict (float32) of an OpenAI one; every OpenAI tensor is used exactly as the mapping says,
    and any key left over or missing is an error rather than a silently dropped or random weight."""
    names = _name_map(config)
    wanted = {src for src, _ in names.values()}
    given = set(state) - IGNORED_KEYS
    missing, unexpected = sorted(wanted - given), sorted(given - wanted)
    if missing or unexpected:
        raise OpenAIClipError(f"not an OpenAI CLIP state dict of the inferred geometry: missing keys [{_short(missing)}], "
                              f"unexpected keys [{_short(unexpected)}]")
    out = {}
    for ours, (theirs, how) in names.items():
        tensor = state[theirs]
        out[ours] = _take(tensor.float() if tensor.is_floating_point() else tensor, how)
    return out


def build_clip_model(state: dict[str, Tensor]) -> CLIPModel:
    """A `CLIPModel` holding the OpenAI weights; shapes that disagree with the inferred geometry are an error."""
    config = clip_config_from_openai(state)
    weights = openai_to_hf_state_dict(state, config)
    model = CLIPModel(config)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(weights[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if wrong:
        raise OpenAIClipError(f"tensor shapes do not fit the inferred geometry: {_short(wrong, 3)}")
    model.load_state_dict(weights, strict=True)
    return model.eval()


def _checked_tokenizer(tokenizer_dir: Path, config: CLIPConfig) -> PreTrainedTokenizerBase:
    """The CLIP tokenizer of ``tokenizer_dir``, checked against the weights (its end token must be the pooled one);
    ``config`` takes its start and padding ids, so the saved folder is self-consistent."""
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise OpenAIClipError(f"tokenizer folder {tokenizer_dir} has no usable tokenizer ({first})") from None
    text = config.text_config
    if tok.eos_token_id != text.eos_token_id or len(tok) > text.vocab_size:
        raise OpenAIClipError(f"tokenizer {tokenizer_dir} (end token id {tok.eos_token_id}, {len(tok)} tokens) does not fit "
                              f"the weights (end token {text.eos_token_id}, vocabulary {text.vocab_size})")
    text.bos_token_id = tok.bos_token_id if tok.bos_token_id is not None else text.bos_token_id
    text.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else text.pad_token_id
    return tok


def convert_chexzero(checkpoint: Path | str, out_dir: Path | str, tokenizer_dir: Path | str | None = None) -> dict:
    """Write ``out_dir`` as a `CLIPModel` folder (config.json + model.safetensors, plus the tokenizer of
    ``tokenizer_dir`` if given) and return its geometry and parameter count."""
    model = build_clip_model(read_openai_state_dict(checkpoint))
    tok = _checked_tokenizer(Path(tokenizer_dir), model.config) if tokenizer_dir is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # safetensors
    if tok is not None:
        tok.save_pretrained(out)
    v, t = model.config.vision_config, model.config.text_config
    return {
        "vision": {"layers": v.num_hidden_layers, "width": v.hidden_size, "heads": v.num_attention_heads,
                   "patch_size": v.patch_size, "image_size": v.image_size},
        "text": {"layers": t.num_hidden_layers, "width": t.hidden_size, "heads": t.num_attention_heads,
                 "context": t.max_position_embeddings, "vocab": t.vocab_size},
        "projection_dim": model.config.projection_dim,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer": str(tokenizer_dir) if tokenizer_dir is not None else None,
    }
