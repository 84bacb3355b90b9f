"""GPU paths in one short run: paper-preset text query and 29-sentence report in bf16, and a stage-1 and a generation
training step under DeepSpeed ZeRO-2 bf16 on one GPU (NCCL process group of one), with the step's samples/s.

    bash bench/gpu.sh                      # on a GPU machine: paper preset
    python bench/gpu.py --preset tiny      # no GPU: the same paths on the CPU (fp32 engine, auto precision)

Each part runs in its own process, so its peak memory is its own. Prints one table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("inference", "detect", "generate")


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def inference(preset: str, repeats: int) -> list[dict]:
    import torch

    from bench.workloads import TOKENS, build, every_token, full_report_prompts, median_time
    from chex_model.precision import apply_precision

    model = build(preset, _device()).eval()
    precision = apply_precision(model, "auto")
    image = torch.rand(model.image_encoder.image_size, model.image_encoder.image_size)
    report = full_report_prompts()
    with every_token(model):
        text = median_time(lambda: model.query(image, prompts=["Pleural effusion"], max_new_tokens=TOKENS), repeats, _sync)
        rep = median_time(lambda: model.report(image, report, max_new_tokens=TOKENS), repeats, _sync)
    return [{"row": f"text query, 1 prompt x {TOKENS} tokens [{precision}]", "s": text},
            {"row": f"full report, 29 x {TOKENS} tokens [{precision}]", "s": rep}]


def train_step(preset: str, workload: str, repeats: int) -> list[dict]:
    import torch

    from bench.workloads import build, detect_loss, freeze_for, generate_loss, median_time, reference_texts
    from pipelines.training.engines import DeepSpeedEngine

    cuda = torch.cuda.is_available()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29531")
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    model = build(preset, _device())
    params = freeze_for(model, workload, preset)
    ds = json.loads((ROOT / "configs/deepspeed" / ("zero2_bf16.json" if cuda else "zero2_cpu.json")).read_text())
    ds.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1)
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    engine = DeepSpeedEngine(model, opt, None, ds, use_gpu=cuda)
    engine.train()
    images = torch.rand(4, 1, model.image_encoder.image_size, model.image_encoder.image_size, device=_device())
    texts = reference_texts(model)
    dtype = engine.dtype

    def step() -> None:
        x = images.to(dtype)
        loss = detect_loss(engine.engine.module, x) if workload == "detect" else generate_loss(engine.engine.module, x, texts)
        engine.backward_and_step(loss)

    t = median_time(step, repeats, _sync)
    samples = 4 if workload == "detect" else len(texts)
    what = "4 images x 20 anatomy prompts" if workload == "detect" else f"{len(texts)} sentences"
    torch.distributed.destroy_process_group()
    return [{"row": f"{workload} train step, ZeRO-2 {'bf16' if dtype == torch.bfloat16 else 'fp32'}, {what}", "s": t,
             "samples_per_s": samples / t}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper", choices=["tiny", "factorized", "paper"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        rows = inference(args.preset, args.repeats) if args.part == "inference" else train_step(args.preset, args.part, args.repeats)
        for r in rows:
            r["peak_gb"] = _peak_gb()
        print(json.dumps(rows))
        return
    rows, failed = [], []
    for part in PARTS:
        proc = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--repeats", str(args.repeats),
                               "--part", part], capture_output=True, text=True)
        if proc.returncode:
            failed.append(part)
            print(f"{part} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        else:
            rows += json.loads(proc.stdout.strip().splitlines()[-1])
    _print(args.preset, rows)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def _print(preset: str, rows: list[dict]) -> None:
    import torch

    from bench.machine import describe_cpu

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {describe_cpu()}"
    print(f"preset {preset} on {where}; torch {torch.__version__}")
    print(f"{'path':<62}{'median':>10}{'samples/s':>11}{'peak GB':>9}")
    for r in rows:
        sps = f"{r['samples_per_s']:.1f}" if "samples_per_s" in r else ""
        print(f"{r['row']:<62}{r['s'] * 1000:>8.1f}ms{sps:>11}{r['peak_gb']:>9.2f}")


if __name__ == "__main__":
    main()
