"""``python -m benchmarks [--quick] [--only peak preprocess train infer memory accuracy]``.

Writes ``benchmarks/results/<machine>-<date>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

from benchmarks import machine
from benchmarks.child import run_child

SECTIONS = ("peak", "preprocess", "train", "infer", "memory", "accuracy")

# (full, quick) sizes of each workload
SIZES = {
    "preprocess_images": (1000, 8),
    "train_steps": (12, 2),
    "infer_images": (256, 8),
    "memory_n": ((1000, 20000), (64, 128)),
}
JPEG_QUALITY = 95  # the preprocessing section's JPEG copy of its renders


def _generate(out: Path, count: int, quick: bool) -> Path:
    from pipeline.synthetic import generate_dataset

    size = {"width": 320, "height": 180} if quick else {}
    return generate_dataset(out, count=count, seed=100, progress=False, resume=True, **size)


def bench_peak(work: Path, quick: bool) -> dict:
    return run_child("benchmarks.peak_bench", "run", quick=quick)


def bench_preprocess(work: Path, quick: bool) -> dict:
    data = _generate(work / "renders", SIZES["preprocess_images"][quick], quick)
    ours = run_child("benchmarks.preprocess_bench", "run_pipeline", data_dir=str(data), out_dir=str(work / "pp"))
    naive = run_child("benchmarks.preprocess_bench", "run_naive", data_dir=str(data), out_dir=str(work / "naive"))
    out = {"pipeline": ours, "naive": naive, "speedup": ours["images_per_s"] / naive["images_per_s"]}
    # The same renders as JPEG: decoding is then cheap (and done smaller), so the rest of the stage shows.
    from benchmarks.preprocess_bench import jpeg_copy

    jpg = jpeg_copy(str(data), str(work / f"renders_jpeg{JPEG_QUALITY}"), JPEG_QUALITY)
    ours = run_child("benchmarks.preprocess_bench", "run_pipeline", data_dir=jpg, out_dir=str(work / "pp_jpeg"))
    naive = run_child("benchmarks.preprocess_bench", "run_naive", data_dir=jpg, out_dir=str(work / "naive_jpeg"))
    out["jpeg"] = {"quality": JPEG_QUALITY, "pipeline": ours, "naive": naive,
                   "speedup": ours["images_per_s"] / naive["images_per_s"]}
    return out


LARGE_BATCH = {"on": False}


def bench_train(work: Path, quick: bool) -> dict:
    steps = SIZES["train_steps"][quick]
    preset = "tiny" if quick else "paper"
    from pipeline.precision import resolve_precision

    rows = {"naive_f32_b16": run_child("benchmarks.train_bench", "run_naive", preset=preset, batch=16, steps=steps)}
    best = resolve_precision("auto", "resnet50" if preset == "paper" else "resnet18ish")[0]
    for precision in dict.fromkeys(("float32", best)):  # the best setting once where it is float32
        rows[f"pipeline_{precision}_b16"] = run_child("benchmarks.train_bench", "run_pipeline", preset=preset,
                                                      batch=16, precision=precision, steps=steps)
    if not quick and LARGE_BATCH["on"]:
        rows["pipeline_auto_b64"] = run_child("benchmarks.train_bench", "run_pipeline", preset=preset, batch=64,
                                              precision="auto", steps=max(steps // 2, 4))
        rows["naive_f32_b64"] = run_child("benchmarks.train_bench", "run_naive", preset=preset, batch=64,
                                          steps=max(steps // 2, 4))
    if not quick:
        rows["pipeline_cpu_preset_b16"] = run_child("benchmarks.train_bench", "run_pipeline", preset="cpu",
                                                    batch=16, precision="auto", steps=5 * steps)
    best = max(v["images_per_s"] for k, v in rows.items() if k.startswith("pipeline_") and "cpu_preset" not in k)
    return {"rows": rows, "speedup_best_vs_naive_b16": best / rows["naive_f32_b16"]["images_per_s"]}


def bench_infer(work: Path, quick: bool) -> dict:
    data = _generate(work / "renders", SIZES["preprocess_images"][quick], quick)
    preset = "tiny" if quick else "paper"
    ours = run_child("benchmarks.infer_bench", "run_pipeline", data_dir=str(data), preset=preset,
                     limit=SIZES["infer_images"][quick])
    naive = run_child("benchmarks.infer_bench", "run_naive", data_dir=str(data), preset=preset,
                      limit=min(64, SIZES["infer_images"][quick]))
    return {"pipeline": ours, "naive": naive, "speedup_b32": ours["e2e_b32_images_per_s"] / naive["e2e_images_per_s"]}


def bench_memory(work: Path, quick: bool) -> dict:
    rows = [run_child("benchmarks.arrays_bench", "run_epoch_memory", n=n, preset="cpu" if not quick else "tiny")
            for n in SIZES["memory_n"][quick]]
    return {"rows": rows, "anon_growth": rows[-1]["peak_anon_mb"] / rows[0]["peak_anon_mb"]}


def bench_accuracy(work: Path, quick: bool) -> dict:
    from benchmarks.accuracy_bench import run

    return run(str(work / "accuracy"), "quick" if quick else "full")


def _pair(row: dict, a: str, b: str) -> str:
    return f"{row[a]:.0f} / {row[b]:.0f}"


def table(results: dict) -> str:
    info = results["machine"]
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores, GPU: {info['gpu']}, bf16 CPU: {info['cpu_bf16']}, "
             f"TensorFlow {info['tensorflow']}, PNG decoder {info.get('png_decoder', 'pillow')} "
             f"({results['date']}{', quick' if results['quick'] else ''})", "",
             "| benchmark | pipeline | naive baseline | ratio |", "| --- | --- | --- | --- |"]
    k = results.get("peak")
    if k:
        lines.append(f"| raw matrix product {k['matmul_n']}^2, GFLOP/s float32 / bf16 | "
                     f"{k['matmul_float32_gflops']:.0f} / {k['matmul_bf16_gflops']:.0f} | | "
                     f"bf16 {k['matmul_bf16_vs_float32']:.2f}x |")
        lines.append(f"| raw 3x3 convolution {tuple(k['conv_shape'])}, GFLOP/s float32 / bf16 | "
                     f"{k['conv3x3_float32_gflops']:.0f} / {k['conv3x3_bf16_gflops']:.0f} | | "
                     f"bf16 {k['conv3x3_bf16_vs_float32']:.2f}x |")
    p = results.get("preprocess")
    if p:
        lines.append(f"| preprocess images/s | {p['pipeline']['images_per_s']:.1f} | {p['naive']['images_per_s']:.1f} "
                     f"| {p['speedup']:.1f}x |")
        lines.append(f"| preprocess peak RSS / anon MB | {_pair(p['pipeline'], 'peak_rss_mb', 'peak_anon_mb')} | "
                     f"{_pair(p['naive'], 'peak_rss_mb', 'peak_anon_mb')} | |")
        j = p.get("jpeg")
        if j:
            lines.append(f"| preprocess the same renders as JPEG q{j['quality']}, images/s | "
                         f"{j['pipeline']['images_per_s']:.1f} | {j['naive']['images_per_s']:.1f} | {j['speedup']:.1f}x |")
    t = results.get("train")
    if t:
        naive = t["rows"]["naive_f32_b16"]["images_per_s"]
        for name, row in t["rows"].items():
            if name.startswith("pipeline"):
                ratio = f"{row['images_per_s'] / naive:.2f}x" if "cpu_preset" not in name else ""
                lines.append(f"| train {row['preset']} b{row['batch']} {row['precision']} images/s | "
                             f"{row['images_per_s']:.1f} | {naive:.1f} (b16 f32) | {ratio} |")
        if "naive_f32_b64" in t["rows"]:
            lines.append(f"| train naive b64 f32 images/s | | {t['rows']['naive_f32_b64']['images_per_s']:.1f} | |")
    i = results.get("infer")
    if i:
        o, nv = i["pipeline"], i["naive"]
        lines.append(f"| inference e2e b32 images/s | {o['e2e_b32_images_per_s']:.1f} | {nv['e2e_images_per_s']:.1f} "
                     f"| {i['speedup_b32']:.1f}x |")
        for mode in ("rot4", "rot8"):
            if f"e2e_b32_{mode}_images_per_s" in o:
                lines.append(f"| inference e2e b32 images/s, --tta {mode} | {o[f'e2e_b32_{mode}_images_per_s']:.1f} | | |")
        latency = ("e2e_b1_latency_ms_median", "e2e_b1_latency_ms_p95")
        lines.append(f"| inference e2e b1 latency median / p95 ms | {_pair(o, *latency)} | {_pair(nv, *latency)} | |")
        lines.append(f"| inference model-only ({o.get('precision', 'float32')}) b32 / b1 images/s | "
                     f"{o['model_b32_images_per_s']:.1f} / "
                     f"{o['model_b1_images_per_s']:.1f} | | |")
    m = results.get("memory")
    if m:
        for row in m["rows"]:
            lines.append(f"| training epoch N={row['n']}: peak anon / RSS MB | {row['peak_anon_mb']:.0f} / "
                         f"{row['peak_rss_mb']:.0f} | | |")
    a = results.get("accuracy")
    if a:
        runs = [("", a["summary"])] + ([(" (--tta none)", a["summary_no_tta"])] if "summary_no_tta" in a else [])
        lines += ["", f"Accuracy (recipe {a['recipe']}: preset {a['preset']}, {a['train_count']} train / "
                      f"{a['test_count']} held-out renders, preprocessing {' '.join(a.get('preprocess_args', [])) or 'plain'}, "
                      f"training {a['train_s'] / 60:.1f} min, "
                      f"{a.get('epochs_run', '?')} epochs; use_vis.py "
                      f"test-time augmentation {a['summary'].get('tta', 'none')}, refinement "
                      f"{a['summary'].get('refine', 'none')}, second look "
                      f"{'on' if a['summary'].get('second_look') else 'off'}):", "",
                  "| metric | value |", "| --- | --- |"]
        for tag, s in runs:
            pck = s["pck_percent"]
            lines += [f"| MAE (dx, dy) px{tag} | ({s['mae_dx']:.3f}, {s['mae_dy']:.3f}) |",
                      f"| RMSE (dx, dy) px{tag} | ({s['rmse_dx']:.3f}, {s['rmse_dy']:.3f}) |",
                      f"| Euclidean mean / median / P95 px{tag} | {s['euclidean_mean']:.3f} / "
                      f"{s['euclidean_median']:.3f} / {s['euclidean_p95']:.3f} |",
                      f"| PCK 2 / 5 / 10 px{tag} | {pck['2']:.2f} / {pck['5']:.2f} / {pck['10']:.2f} % |"]
            d = s.get("detections_before_refinement")
            if d:
                lines += [f"| before pose refinement: mean / median / P95 px, PCK 2 px{tag} | "
                          f"{d['euclidean_mean']:.3f} / {d['euclidean_median']:.3f} / {d['euclidean_p95']:.3f}, "
                          f"{d['pck_percent']['2']:.2f} % |"]
        lines += [f"| visible keypoints evaluated | {a['summary']['visible_keypoints_count']} |",
                  f"| time to val PCK@2px >= 95 % | {a['time_to_val_pck2_95']} (epoch, s) |"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke run of every section.")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="Sections to run.")
    parser.add_argument("--large-batch", action="store_true",
                        help="Also time training at batch 64 (the paper model takes minutes per row on a CPU).")
    parser.add_argument("--work-dir", default="", help="Scratch folder (default: a temporary one).")
    parser.add_argument("--out", default="benchmarks/results", help="Folder of the results JSON.")
    parser.add_argument("--fresh", action="store_true",
                        help="Overwrite the day's results file instead of merging the sections run now into it.")
    args = parser.parse_args(argv)
    LARGE_BATCH["on"] = args.large_batch
    info = machine.describe()
    results = {"machine": info, "date": datetime.date.today().isoformat(), "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        for section in args.only:
            print(f"[benchmarks] {section} ...", flush=True)
            results[section] = globals()[f"bench_{section}"](work, args.quick)
    out = Path(args.out) / f"{machine.slug(info)}-{results['date']}{'-quick' if args.quick else ''}.json"
    from pipeline.arrays import write_json

    if out.is_file() and not args.fresh:  # sections run earlier the same day on this machine are kept
        earlier = json.loads(out.read_text())
        if earlier.get("machine") == info:
            results = {**earlier, **results}

    write_json(out, results)
    print(table(results))
    print(f"\nresults: {out}")
    return results


if __name__ == "__main__":
    main()
