"""Where the time of one CPU training step of a detector goes (torch profiler, 1 thread).

Usage::

    .venv/bin/python bench/profile_detector_step.py --data DEMO_DIR [--arch fasterrcnn]
        [--steps 12] [--batch 4] [--crop 128] [--out bench/results/detector_profile.md]

Builds the detector exactly as ``LesionDetector`` does with the CLI's CPU defaults, takes
``--batch`` training windows of the demo's training key slices, runs a few warm-up steps, then
profiles ``--steps`` forward + backward + optimiser steps and groups the CPU time by the
detector's stages (backbone, FPN, RPN, anchor matching / sampling, RoI pooling, box head,
losses, backward, optimiser). Writes a Markdown table (appended per architecture).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="demo folder with manifest.parquet")
    ap.add_argument("--arch", default="fasterrcnn")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--spacing", type=float, default=0.8)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "detector_profile.md")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.set_num_threads(1)
    from deeplesion_lab.detection.dataset import collate
    from deeplesion_lab.detection.train import LesionDetector, select_split
    from deeplesion_lab.manifest import manifest_images_root, read_manifest

    m = read_manifest(args.data / "manifest.parquet")
    det = LesionDetector(arch=args.arch, image_size=args.image_size, spacing_mm=args.spacing,
                         train_crop=args.crop or None, box_head_size=256, box_batch_size=32,
                         num_threads=1, progress=False)
    train = select_split(m, "train")
    ds = det._dataset(train, manifest_images_root(m), train=True, context=m)
    torch.manual_seed(0)
    model = det._build(1)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batches = [collate([ds[(s * args.batch + j) % len(ds)] for j in range(args.batch)])
               for s in range(args.steps + 3)]

    # stage labels from the module tree: forward hooks that open a record_function range
    stages = _stage_modules(model, args.arch)
    handles = []
    for name, mod in stages.items():
        ctx = {}

        def pre(_m, _i, name=name, ctx=ctx):
            ctx["r"] = record_function(f"stage::{name}")
            ctx["r"].__enter__()

        def post(_m, _i, _o, ctx=ctx):
            ctx["r"].__exit__(None, None, None)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))

    def step(images, targets):
        with record_function("stage::forward (all)"):
            losses = model(images, targets)
            loss = sum(losses.values())
        opt.zero_grad()
        with record_function("stage::backward"):
            loss.backward()
        with record_function("stage::optimiser"):
            opt.step()

    for images, targets, _ in batches[:3]:
        step(images, targets)
    t0, c0 = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for images, targets, _ in batches[3:]:
            step(images, targets)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for h in handles:
        h.remove()
    totals: dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.key.startswith("stage::"):
            totals[ev.key[len("stage::"):]] = ev.cpu_time_total / 1e6 / args.steps
    # un-profiled rate (the profiler adds overhead)
    c1 = time.process_time()
    for images, targets, _ in batches[3:]:
        step(images, targets)
    cpu_plain = (time.process_time() - c1) / args.steps
    fwd = totals.pop("forward (all)", float("nan"))
    lines = [
        f"## {args.arch}: one training step, batch {args.batch} windows of {args.crop} px "
        f"({args.image_size} px canvas at {args.spacing} mm/px), 1 torch thread",
        "",
        f"Command: `.venv/bin/python bench/profile_detector_step.py --data DEMO --arch "
        f"{args.arch} --steps {args.steps} --batch {args.batch} --crop {args.crop}` "
        f"({time.strftime('%Y-%m-%d')}). Without the profiler: {cpu_plain * 1000:.0f} "
        f"CPU-ms per step = {args.batch / cpu_plain:.1f} training windows per CPU-second "
        f"(per core). Profiled: {cpu / args.steps * 1000:.0f} CPU-ms per step "
        f"(wall {wall / args.steps * 1000:.0f} ms on a shared machine).",
        "",
        "| stage | ms per step | share of the step |",
        "|---|---|---|",
    ]
    total = fwd + totals.get("backward", 0) + totals.get("optimiser", 0)
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v * 1000:.1f} | {v / total:.0%} |")
    lines.append(f"| forward (all stages) | {fwd * 1000:.1f} | {fwd / total:.0%} |")
    lines += ["", "Top operators by self CPU time:", "", "```",
              prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15,
                                        max_name_column_width=45),
              "```", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = args.out.read_text() if args.out.is_file() else "# Detector training step profiles\n\n"
    marker = f"## {args.arch}:"
    if marker in old:  # replace this architecture's section
        head, _, rest = old.partition(marker)
        nxt = rest.find("\n## ")
        old = head + (rest[nxt + 1:] if nxt >= 0 else "")
    args.out.write_text(old.rstrip() + "\n\n" + text)
    return 0


def _stage_modules(model, arch: str) -> dict:
    if arch == "fasterrcnn":
        return {
            "input transform (normalise, batch)": model.transform,
            "backbone body (MobileNetV3)": model.backbone.body,
            "FPN": model.backbone.fpn,
            "RPN head (conv)": model.rpn.head,
            "anchors": model.rpn.anchor_generator,
            "RPN (all: head, anchors, matching, proposals, NMS, loss)": model.rpn,
            "RoIAlign (box_roi_pool)": model.roi_heads.box_roi_pool,
            "box head (MLP)": model.roi_heads.box_head,
            "RoI heads (all: sampling, matching, pool, head, loss)": model.roi_heads,
        }
    return {name: mod for name, mod in model.named_children()}


if __name__ == "__main__":
    sys.exit(main())
