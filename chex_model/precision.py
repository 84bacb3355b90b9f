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


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextlib.contextmanager
def training_autocast(device: torch.device, cpu_bf16: bool) -> Iterator[None]:
    """bf16 autocast of a CPU training forward when asked for and the CPU computes bf16 natively (the stage-1 step
    ran ~1.5x faster on the 2-core AVX-512 BF16 machine); on a GPU the engine's own precision applies instead."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16 and device.type == "cpu" and cpu_has_bf16()):
        yield


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


def _to_bf16(module: nn.Module) -> None:
    """bf16 weights; on a CPU the normalizations stay fp32 (its kernels take bf16 inputs with fp32 parameters, CUDA's
    do not)."""
    module.to(torch.bfloat16)
    if next(module.parameters()).device.type != "cpu":
        return
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
            m.float()


def apply_precision(model: nn.Module, requested: str = "auto") -> str:
    """Set ``model``'s inference precision in place (no second copy of the weights); returns the one applied.

    ``int8``: the language model and prefix encoder int8; on a CPU with native bf16, the vision side (image encoder,
    detector, post decoder, prompt encoder) also runs in bf16, where it is compute-bound and ~3x faster than fp32
    (bench/model.py). ``bf16``: every weight bf16. The model is for inference afterwards.
    """
    precision = resolve_precision(requested, next(model.parameters()).device)
    bf16_vision = precision == "bf16" or (precision == "int8" and cpu_has_bf16())
    if precision == "int8":
        from chex_model.cpu_inference import quantize_for_cpu

        quantize_for_cpu(model)
    if bf16_vision:
        for name, child in model.named_children():
            if name != "generator" or precision == "bf16":
                _to_bf16(child)
    model.precision, model.bf16_autocast = precision, bf16_vision
    return precision


@contextlib.contextmanager
def autocast_for(model: nn.Module) -> Iterator[None]:
    """bf16 autocast where the model's vision weights are bf16, so fp32 inputs meet bf16 weights; else nothing."""
    if not getattr(model, "bf16_autocast", False):
        yield
        return
    with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16):
        yield
