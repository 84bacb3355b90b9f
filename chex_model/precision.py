"""Inference precision: ``fp32``, ``bf16`` or ``int8`` weights, and ``auto``, the fastest that answers like fp32.

Batch-1 decoding reads every language-model weight once per token, so it runs at the memory bandwidth: fewer bytes
per weight is the speed-up. On a CPU, ``auto`` takes int8 (dynamic quantization, fbgemm/x86 kernels, VNNI where the
CPU has it): ~3.4x faster decoding than fp32 on the 2-core AVX-512 machine, where bf16 weights in eager PyTorch
measured *slower* than fp32 (bench/model.py). On a GPU it takes bf16 where the GPU supports it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "int8")


def int8_supported() -> bool:
    """Whether this PyTorch build has the x86 int8 kernels dynamic quantization uses."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> str:
    """``requested`` (one of :data:`PRECISIONS`) -> the precision to run on ``device``; ValueError when impossible."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    cuda = torch.device(device).type == "cuda"
    if requested == "int8" and (cuda or not int8_supported()):
        raise ValueError("int8 runs on an x86 CPU only (this device or PyTorch build has no int8 kernels)")
    if requested != "auto":
        return requested
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "int8" if int8_supported() else "fp32"


def apply_precision(model: nn.Module, requested: str = "auto") -> str:
    """Set ``model``'s inference precision in place (no second copy of the weights); returns the one applied.

    The model is for inference afterwards: int8 replaces the language model's layers, bf16 casts every weight but
    the normalizations'.
    """
    precision = resolve_precision(requested, next(model.parameters()).device)
    if precision == "int8":
        from chex_model.cpu_inference import quantize_for_cpu

        quantize_for_cpu(model)
    elif precision == "bf16":
        model.to(torch.bfloat16)
        for m in model.modules():  # normalizations keep fp32 parameters: PyTorch's CPU kernels take bf16 inputs then
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
                m.float()
    model.precision = precision
    return precision


@contextlib.contextmanager
def autocast_for(model: nn.Module) -> Iterator[None]:
    """bf16 autocast where the model's weights are bf16, so fp32 inputs meet bf16 weights; else nothing."""
    if getattr(model, "precision", "fp32") != "bf16":
        yield
        return
    with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16):
        yield
