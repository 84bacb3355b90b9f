"""Model speed and memory on the CPU beside the reference code measured on the same kind of machine.

    python bench/model.py --presets paper  # the paper's sizes, ~15 min, ~17 GB for the generation step
    python bench/model.py --presets tiny   # seconds

Every (preset, workload) runs in its own process, so its peak RSS is its own. The reference figures are
chex-reference.md §7.1 (2 threads, paper size, random weights, fp32), taken for the CPU vendor this machine has;
the ratio is ours / reference (< 1: we are faster). The roofline column divides the bytes one decoding step reads
(the language model's weights as stored at that precision) by this machine's measured read bandwidth.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_info, describe_cpu  # noqa: E402

REFERENCE = {  # chex-reference.md §7.1: seconds and peak GB of the unmodified reference code, by CPU vendor
    "AMD": {"detect": (1.02, 2.4), "generate": (11.9, 18.8), "boxes": (0.15, None), "decode": (0.078, None),
            "text": (1.80, 4.8), "report": (5.95 + 1.06, 5.1)},
    "Intel": {"detect": (0.86, 2.4), "generate": (9.9, 19.2), "boxes": (0.12, None), "decode": (0.061, None),
              "text": (1.42, 4.8), "report": (4.08 + 0.74, 5.1)},
}
WORKLOADS = ("detect", "detect-bf16", "generate", "generate-bf16", "infer-fp32", "infer-bf16", "infer-int8")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def train_step(preset_name: str, workload: str, repeats: int) -> list[dict]:
    """One optimizer step; a ``-bf16`` workload runs the forward under the trainer's CPU bf16 autocast
    (``cpu_bf16: true``), which is off where the CPU has no native bf16."""
    import torch

    from chex_model.precision import cpu_has_bf16, training_autocast

    workload, bf16 = workload.removesuffix("-bf16"), workload.endswith("-bf16")

    from bench.workloads import build, detect_loss, freeze_for, generate_loss, median_time, reference_texts, target_tokens

    model = build(preset_name).train()
    params = freeze_for(model, workload, preset_name)
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    size = model.image_encoder.image_size
    images = torch.rand(4, 1, size, size)
    texts = reference_texts(model)

    def step() -> None:
        with training_autocast(images.device, bf16):
            loss = detect_loss(model, images) if workload == "detect" else generate_loss(model, images, texts)
        opt.zero_grad(set_to_none=False)  # gradients allocated once, reused every step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()

    t = median_time(step, repeats if workload == "detect" else max(1, repeats // 2))
    what = ("4 images x 20 anatomy prompts" if workload == "detect"
            else f"{len(texts)} sentences, {target_tokens(model, texts)} tokens")
    tag = " [bf16 autocast]" if bf16 and cpu_has_bf16() else " [bf16 asked, CPU lacks it: fp32]" if bf16 else ""
    return [{"key": workload, "row": f"train step: {workload} ({what}){tag}", "s": t}]


def bytes_per_token(lm) -> int:
    """Bytes of weights one decoding step reads: every linear and normalization layer as stored (the tied output
    layer is the embedding, read whole); embedding lookups read one row and are left out."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as QLinear
    from transformers.pytorch_utils import Conv1D

    total = 0
    for m in lm.modules():
        if isinstance(m, QLinear):
            w, b = m.weight(), m.bias()
            total += w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())
        elif isinstance(m, (torch.nn.Linear, Conv1D, torch.nn.LayerNorm)):
            total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total


def inference(preset_name: str, precision: str, repeats: int) -> list[dict]:
    import torch

    from bench.workloads import TOKENS, build, every_token, full_report_prompts, median_time
    from chex_model.image_encoder import normalize
    from chex_model.precision import apply_precision, autocast_for, resolve_precision

    model = build(preset_name).eval()
    apply_precision(model, precision)
    tag = f"{precision}{', auto' if precision == resolve_precision('auto') else ''}"
    size = model.image_encoder.image_size
    image = torch.rand(size, size)
    report = full_report_prompts()

    def fresh(fn):  # the reference's condition: the prompt cache cleared before each query
        return lambda: (model.prompt_encoder.clear_cache(), fn())

    with every_token(model), torch.inference_mode(), autocast_for(model):
        feats = model.encode_image(normalize(image[None, None], model.cfg.image))
        roi = model.detect(feats, model.encode_prompts(["Pleural effusion"])).features[0]
        boxes = median_time(fresh(lambda: model.detect(model.encode_image(normalize(image[None, None], model.cfg.image)),
                                                       model.encode_prompts(["Pleural effusion"]))), repeats)
        one = median_time(lambda: model.generate(roi, 1), repeats)
        many = median_time(lambda: model.generate(roi, TOKENS + 1), repeats)
    with every_token(model):
        text = median_time(fresh(lambda: model.query(image, prompts=["Pleural effusion"], max_new_tokens=TOKENS)), repeats)
        box = median_time(lambda: model.query(image, boxes=[(0.3, 0.6, 0.2, 0.3)], max_new_tokens=TOKENS), repeats)
        rep = median_time(fresh(lambda: model.report(image, report, max_new_tokens=TOKENS)), max(1, repeats // 2))
    per_token = (many - one) / TOKENS
    return [
        {"key": "boxes", "row": f"text query to boxes + ROI token [{tag}]", "s": boxes},
        {"key": "decode", "row": f"decode per token, batch 1 [{tag}]", "s": per_token,
         "bytes": bytes_per_token(model.generator.lm)},
        {"key": "text", "row": f"text query (1 prompt, {TOKENS} tokens) [{tag}]", "s": text},
        {"key": "", "row": f"box query (1 box, {TOKENS} tokens) [{tag}]", "s": box},
        {"key": "report", "row": f"full report (29 x {TOKENS} tokens + de-dup) [{tag}]", "s": rep},
    ]


def run_workload(preset_name: str, workload: str, repeats: int) -> list[dict]:
    import torch

    torch.set_num_threads(2)
    if workload.startswith("infer-"):
        rows = inference(preset_name, workload.removeprefix("infer-"), repeats)
    else:
        rows = train_step(preset_name, workload, repeats)
    for r in rows:
        r.update(preset=preset_name, peak_rss_gb=_peak_gb())
    return rows


def _reference() -> tuple[str, dict]:
    vendor = "AMD" if "AMD" in cpu_info().get("vendor_id", "") else "Intel"
    return vendor, REFERENCE[vendor]


def _print(rows: list[dict], bandwidth: float) -> None:
    vendor, ref = _reference()
    print(f"machine: {describe_cpu()}; read bandwidth {bandwidth:.1f} GB/s; reference: the {vendor} column of §7.1")
    print(f"{'preset':<8}{'workload':<58}{'time':>10}{'peak RSS':>10}{'ref':>9}{'ours/ref':>9}{'roofline':>18}")
    for r in rows:
        base = ref.get(r["key"]) if r["preset"] == "paper" else None
        ratio = (f"{base[0]:.2f} s" if base[0] >= 0.5 else f"{base[0] * 1000:.0f} ms", f"{r['s'] / base[0]:.2f}x") if base else ("", "")
        floor = ""
        if "bytes" in r:
            limit = r["bytes"] / 1e9 / bandwidth
            floor = f"{r['bytes'] / 1e9:.2f} GB {limit * 1000:.0f} ms {r['s'] / limit:.1f}x"
        t = f"{r['s']:.2f} s" if r["s"] >= 1 else f"{r['s'] * 1000:.{0 if r['s'] >= 0.1 else 1}f} ms"
        print(f"{r['preset']:<8}{r['row']:<58}{t:>10}{r['peak_rss_gb']:>8.2f}GB{ratio[0]:>9}{ratio[1]:>9}{floor:>18}")
    print("ours/ref < 1: we are faster. roofline: bytes read per token, the time reading them takes at the measured "
          "bandwidth, and how far the step is from it. Reference report time includes its de-duplication re-encoding.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "factorized", "paper"])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", nargs=2, metavar=("PRESET", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_workload(args.worker[0], args.worker[1], args.repeats)))
        return
    from bench.machine import read_bandwidth_gbs

    rows, failed = [], []
    for preset_name in args.presets:
        for workload in args.workloads:
            proc = subprocess.run([sys.executable, __file__, "--worker", preset_name, workload, "--repeats", str(args.repeats)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                failed.append(f"{preset_name}/{workload}")
                print(f"{preset_name}/{workload} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows += json.loads(proc.stdout.strip().splitlines()[-1])
    _print(rows, read_bandwidth_gbs())
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
