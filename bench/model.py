"""Model speed and memory on the CPU (random weights, fp32): training steps, query and report latency, peak RSS.

    python bench/model.py                 # tiny + paper presets (paper needs ~16 GB for its generation step)
    python bench/model.py --presets tiny  # seconds

Each (preset, workload) runs in its own process so its peak RSS is its own. Rows mirror the reference's own CPU
measurements (chex-reference.md §7.1: 2 threads, paper size, random weights), printed beside ours as a ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe_cpu  # noqa: E402

REFERENCE = {  # seconds, GB (the reference code on a 2-core CPU, paper size)
    "text query to boxes + ROI token (no text)": (0.12, 4.8),
    "train step: detect (4 img x 20 anatomy prompts)": (0.86, 2.4),
    "train step: generate (8 sentences x 22 tokens)": (9.9, 19.2),
    "text query (1 prompt, 20 tokens)": (1.42, 4.8),
    "full report (29 prompts x 20 tokens)": (4.08 + 0.74, 5.1),
}
WORKLOADS = ("detect", "generate", "inference", "inference-int8")
ANATOMY = ["Right lung", "Left lung", "Right upper lung zone", "Right mid lung zone", "Right lower lung zone",
           "Left upper lung zone", "Left mid lung zone", "Left lower lung zone", "Right hilar structures",
           "Left hilar structures", "Right apical zone", "Left apical zone", "Right costophrenic angle",
           "Left costophrenic angle", "Trachea", "Spine", "Mediastinum", "Cardiac silhouette", "Carina", "Abdomen"]
SENTENCE = "There is a moderate right pleural effusion with adjacent compressive atelectasis of the lower lobe."


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _build(preset_name: str):
    import torch
    from transformers.initialization import no_init_weights

    from chex_model.chex import ChEX
    from chex_model.config import preset

    torch.manual_seed(0)
    cfg = preset(preset_name)
    if preset_name == "tiny":
        return ChEX.build(cfg)
    with no_init_weights():  # random *values* do not matter for timing; skip ~1B-parameter initialisation
        model = ChEX.build(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model


def run_workload(preset_name: str, workload: str, repeats: int) -> list[dict]:
    import torch

    from chex_model import losses
    from chex_model.image_encoder import normalize

    torch.set_num_threads(2)
    model = _build(preset_name)
    size = model.image_encoder.image_size
    images = torch.rand(4, 1, size, size)
    rows = []
    if workload == "detect":  # stage 1: image encoder top blocks + detector, anatomy boxes, L1 + gIoU
        model.image_encoder.freeze(9 if preset_name != "tiny" else 1, True)
        params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("image_encoder", "detector"))]
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
        targets = torch.rand(4, len(ANATOMY), 1, 4) * 0.4 + 0.3
        tmask = torch.ones(4, len(ANATOMY), 1, dtype=torch.bool)
        model.train()

        def step() -> None:
            feats = model.encode_image(normalize(images, model.cfg.image))
            det = model.detect(feats, model.encode_prompts(ANATOMY), post_decoder=False)
            out = losses.detection_losses(det.boxes, det.box_scores, targets, tmask, tmask[..., 0], model.cfg.loss).terms
            opt.zero_grad(set_to_none=True)
            (5 * out["l1"] + 2 * out["giou"] + out["score"]).backward()
            opt.step()

        t = _median(step, repeats)
        rows.append({"row": "train step: detect (4 img x 20 anatomy prompts)", "seconds": t, "per_sample_s": t / 4})
    elif workload == "generate":  # stage 3: post decoder + prefix + GPT-2 on 8 sentences
        model.image_encoder.freeze_all()
        model.detector.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=3e-4, fused=True)
        words = SENTENCE.split()
        texts = [" ".join(words[: 12 + i]) for i in range(8)]
        model.train()

        def step() -> None:
            feats = model.encode_image(normalize(images[:2], model.cfg.image))
            rois = model.encode_boxes(feats, torch.rand(2, 4, 4) * 0.3 + 0.35).flatten(0, 1)
            loss = model.generator.loss(rois, texts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        t = _median(step, max(1, repeats // 2))
        n_tok = int(model.generator.encode_targets(texts)[1].sum())
        rows.append({"row": "train step: generate (8 sentences x 22 tokens)", "seconds": t, "per_sample_s": t / 8,
                     "tokens": n_tok})
    else:
        model.eval()
        if workload == "inference-int8":
            from chex_model.cpu_inference import quantize_for_cpu

            quantize_for_cpu(model)
        tag = " [int8]" if workload == "inference-int8" else ""
        image = images[0, 0]
        forced = model.generator.eos_id
        model.generator.eos_id = -1  # never stop early: every query really generates its 20 tokens
        try:
            t_text = _median(lambda: model.query(image, prompts=["Pleural effusion"], max_new_tokens=20), repeats)
            t_box = _median(lambda: model.query(image, boxes=[(0.3, 0.6, 0.2, 0.3)], max_new_tokens=20), repeats)
            t_rep = _median(lambda: model.report(image, max_new_tokens=20), max(1, repeats // 2))
        finally:
            model.generator.eos_id = forced
        with torch.inference_mode():
            feats = model.encode_image(normalize(images[:1], model.cfg.image))
            t_det = _median(lambda: model.detect(model.encode_image(normalize(images[:1], model.cfg.image)),
                                                 model.encode_prompts(["Pleural effusion"])), repeats)
            t_tok = _median(lambda: model.generate(model.detect(feats, model.encode_prompts(["Pleural effusion"])).features[0], 1), repeats)
        rows += [
            {"row": f"text query to boxes + ROI token (no text){tag}", "seconds": t_det},
            {"row": f"text query (1 prompt, 1 token){tag}", "seconds": t_tok},
            {"row": f"text query (1 prompt, 20 tokens){tag}", "seconds": t_text},
            {"row": f"box query (1 box, 20 tokens){tag}", "seconds": t_box},
            {"row": f"full report (29 prompts x 20 tokens){tag}", "seconds": t_rep},
        ]
    for r in rows:
        r.update(preset=preset_name, peak_rss_gb=_peak_gb())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "factorized", "paper"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", nargs=2, metavar=("PRESET", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_workload(args.worker[0], args.worker[1], args.repeats)))
        return
    rows = []
    for preset_name in args.presets:
        for workload in WORKLOADS:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", preset_name, workload, "--repeats", str(args.repeats)],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                print(f"{preset_name}/{workload} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows += json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"machine: {describe_cpu()}")
    print(f"{'preset':<11}{'workload':<56}{'time':>10}{'per sample':>12}{'peak RSS':>10}{'ref time':>10}{'ratio':>8}")
    for r in rows:
        ref = REFERENCE.get(r["row"].replace(" [int8]", "")) if r["preset"] == "paper" else None
        per = f"{r['per_sample_s'] * 1000:.0f} ms" if "per_sample_s" in r else ""
        cells = (f"{ref[0]:.2f} s", f"{ref[0] / r['seconds']:.2f}x") if ref else ("", "")
        print(f"{r['preset']:<11}{r['row']:<56}{r['seconds'] * 1000:>8.0f}ms{per:>12}{r['peak_rss_gb']:>8.2f}GB"
              f"{cells[0]:>10}{cells[1]:>8}")
    print("ratio = reference time / our time (> 1: we are faster). Reference: chex-reference.md §7.1, its full-report "
          "time includes re-encoding sentences for de-duplication, as ours does.")


if __name__ == "__main__":
    main()
