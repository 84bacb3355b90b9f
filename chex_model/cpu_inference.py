"""Faster CPU inference: int8 weights for the language model and the prefix encoder.

Greedy decoding of one sentence reads every GPT-2 weight once per token, so on a CPU it is bound by memory bandwidth
(GPT-2 medium in fp32: ~1.4 GB per token). Dynamic int8 quantization of the Linear layers reads a quarter of that.
PyTorch's eager ``quantize_dynamic`` (fbgemm kernels) is used although upstream now points to torchao: on this
project's AVX2 development CPU torchao 0.18's eager int8 kernels measured ~1.7x *slower* than fp32, while
``quantize_dynamic`` was ~6x faster (bench/model.py). Inference only; training keeps fp32 weights. Quantization
runs in place, one layer at a time, so the peak memory stays that of the fp32 model.
"""
from __future__ import annotations

import warnings

from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.ao.quantization import default_dynamic_qconfig
from transformers.pytorch_utils import Conv1D


def _as_linear(conv: Conv1D) -> nn.Linear:
    """GPT-2's Conv1D (x @ W + b) -> an equivalent nn.Linear, so it quantizes like one."""
    linear = nn.Linear(conv.weight.shape[0], conv.nf, device="meta")  # no throw-away initialisation
    linear.weight = nn.Parameter(conv.weight.detach().T.contiguous(), requires_grad=False)
    linear.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)
    return linear


def _quantize_linears(module: nn.Module) -> None:
    """Every Linear (and Conv1D) under ``module`` -> its int8 dynamic twin, one at a time: each fp32 original is
    released as soon as its replacement exists, so memory never holds both copies of more than one layer."""
    for name, child in module.named_children():
        if isinstance(child, Conv1D):
            child = _as_linear(child)
        if isinstance(child, nn.Linear):
            child.qconfig = default_dynamic_qconfig
            setattr(module, name, DynamicLinear.from_float(child))
        else:
            _quantize_linears(child)


def quantize_for_cpu(model: nn.Module) -> nn.Module:
    """Int8 dynamic quantization of the sentence generator (GPT-2 + prefix encoder), in place; returns the model.

    The tied GPT-2 output head is quantized as its own int8 copy (the fp32 embedding stays for the lookups), so the
    model cannot be saved or trained afterwards. GPT-2 goes first: the memory its fp32 layers free covers the
    transient copies of the prefix encoder's one large layer, so the peak stays that of the fp32 model.
    """
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU only")
    gen = model.generator
    head = nn.Linear(gen.lm.lm_head.in_features, gen.lm.lm_head.out_features, bias=False, device="meta")
    head.weight = nn.Parameter(gen.lm.transformer.wte.weight.detach(), requires_grad=False)
    gen.lm.lm_head = head
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*quantize.*")
        _quantize_linears(gen.lm)
        _quantize_linears(gen.prefix)
    return model.eval()
