"""The bench's table: one row per contender (median, spread over rounds, roofline share, memory,
speed against Keras), the training command's epoch part by part, then the side measurements."""

from __future__ import annotations

import statistics
from typing import Any

from leafnet.lab.worker import KERAS_BACKENDS
from leafnet.tables import markdown_table


def _header(report: dict[str, Any]) -> list[str]:
    c, m = report["config"], report["machine"]
    # In lockstep the rounds are blocks of consecutive cycles (lab.lockstep.as_rounds).
    rounds, between = (
        (f"steps in lockstep, cut into {c['rounds']} rounds", "cycle")
        if c.get("lockstep")
        else (f"{c['rounds']} alternating rounds", "round")
    )
    l3 = f"L3 {m['l3_bytes'] / 2**20:.0f} MiB, " if m.get("l3_bytes") else ""
    rows = report["contenders"].values()
    bands = sorted({r["band_bytes"] for r in rows if "band_bytes" in r})
    kernels = sorted({r["conv1_kernel"] for r in rows if "conv1_kernel" in r})
    return [
        f"leafnet bench {report['date']}  {m['cpu']}, {m['threads']} threads, {l3}"
        f"torch {m['torch']}, load {m['load_avg_1m']:.1f}"
        + (f", OpenMP waits {m['omp_wait_policy']}" if m.get("omp_wait_policy") else "")
        + (f"; conv1 bands of {' or '.join(f'{b / 2**20:g}' for b in bands)} MiB" if bands else "")
        + (f" ({' and '.join(kernels)} kernels)" if kernels else ""),
        f"{c['image_size']}x{c['image_size']}, batch {c['batch']} (micro {c['micro_batch']}), "
        f"{c.get('accelerator', 'cpu')}{' ' + c['gpu'] if c.get('gpu') else ''}, "
        f"leafnet precision {c.get('precision', '32-true')}, "
        f"median of {c['steps']} steps after {c['warmup']} warm-up, {rounds}; "
        f"{report['train_gflop_per_image']:.2f} GFLOP/image",
        f"host: fp32 4096² matmul {report['roofline_gflops']:.0f} GFLOP/s{_host_range(report)}, "
        f"memory copy {report.get('copy_gbs', float('nan')):.1f} GB/s (medians of "
        f"{len(report.get('host_samples', []))} samples, one before the first {between} and one "
        "after each)",
    ]


def _host_range(report: dict[str, Any]) -> str:
    """The matmul samples' range and spread (as the contenders' spread is reckoned): how much the
    host itself moved during the run, beside which a contender's spread can be read."""
    samples = [h["matmul_gflops"] for h in report.get("host_samples", [])]
    if len(samples) < 2:
        return ""
    spread = (max(samples) - min(samples)) / statistics.median(samples)
    return f" (samples {min(samples):.0f}-{max(samples):.0f}, spread {spread:.0%})"


def _contender_table(report: dict[str, Any]) -> str:
    contenders, micro = report["contenders"], report["config"]["micro_batch"]
    keras = [k for k in KERAS_BACKENDS if "ms_per_image" in contenders.get(k, {})]
    header = ["contender", "ms/image", "rounds", "spread", "GFLOP/s", "roofline", "peak RSS GB"]
    header += [f"vs {k}" for k in keras]
    rows: list[list[str]] = []
    for name, r in contenders.items():
        if "ms_per_image" not in r:
            rows.append([name, f"error: {r.get('error', '?')[:80]}"] + [""] * (len(header) - 2))
            continue
        per_round = r.get("round_ms_per_image") or [r["ms_per_image"]]
        own_micro = r.get("micro_batch", micro) != micro
        label = f"{name} (micro {r['micro_batch']})" if own_micro else name
        if name == "command":
            label = "command (`python -m leafnet.train`, steady epochs)"
        elif name == "command+layers":
            label = f"command, conv1 layer by layer (`model.conv1_in_bands=false`, micro {r.get('micro_batch', '?')})"
        elif name == "command+bf16":
            label = f"command at `precision=bf16-mixed` (micro {r.get('micro_batch', '?')})"
        rows.append(
            [
                label,
                f"{r['ms_per_image']:.1f}",
                f"{min(per_round):.1f}-{max(per_round):.1f}",
                f"{r.get('spread', 0.0):.0%}",
                f"{r['gflops']:.0f}",
                f"{r['roofline_share']:.0%}",
                f"{r['peak_rss_gb']:.2f}",
            ]
            + [f"{r[f'speedup_vs_{k}']:.2f}x" if f"speedup_vs_{k}" in r else "-" for k in keras]
        )
    for name, why in report.get("skipped", {}).items():
        rows.append([name, f"skipped: {why}"] + [""] * (len(header) - 2))
    return markdown_table(header, rows, right=[False] + [True] * (len(header) - 1))


# Contenders that time the step alone, in the order `_breakdown` prefers them.
STEP_ALONE = ("leafnet", "torch+tuned+cl")


def _breakdown(report: dict[str, Any]) -> list[str]:
    """The command's steady epoch, part by part, against the step alone."""
    command = report["contenders"].get("command", {})
    parts = command.get("breakdown_ms_per_image")
    if not parts:
        return []
    epoch = command["ms_per_image"]
    # The step alone: leafnet's own, else the bare loop over the same network.
    alone = [n for n in STEP_ALONE if "ms_per_image" in report["contenders"].get(n, {})]
    lines = [
        "",
        f"the command's steady epoch, {epoch:.1f} ms per training image "
        f"({command.get('train_images', '?')} training images), part by part (medians over rounds;"
        " Lightning's profiler; checkpoint writes are the hand-off to the writer thread, whose"
        " work falls in whatever runs beside it, mostly the step):",
    ]
    shares = command.get("breakdown_share", {})  # older reports: the median epoch's share
    rows = [[k, f"{v:.2f}", f"{shares.get(k, v / epoch):.1%}"] for k, v in parts.items()]
    lines.append(markdown_table(["part", "ms/image", "share"], rows, right=[False, True, True]))
    outside = command.get("outside_share", 1 - parts.get("step", epoch) / epoch)
    line = f"outside the command's step (every part but the first): {outside:.1%} of the epoch"
    if len(command.get("outside_share_rounds", [])) > 1:
        each = command["outside_share_rounds"]
        line += f" (the median of the rounds' own, {min(each):.1%}-{max(each):.1%})"
    if alone:
        step = report["contenders"][alone[0]]["ms_per_image"]
        line += f"; the epoch against the step alone ({alone[0]}, {step:.1f} ms/image): "
        line += f"{epoch / step - 1:+.1%}"
    return [*lines, line]


def _lockstep_lines(report: dict[str, Any]) -> list[str]:
    """In lockstep: each contender's steps against the reference's in the same cycle, and how
    they move with the host's own matmul time."""
    if not report["config"].get("lockstep"):
        return []
    rows, reference = [], None
    for name, row in report["contenders"].items():
        if "step_s" not in row:
            continue
        pair = row.get("lockstep")
        reference = pair["reference"] if pair else reference
        q = statistics.quantiles(row["step_s"], n=10) if len(row["step_s"]) > 1 else [0, 0]
        host = row.get("host_correlation")
        rows.append([
            name,
            f"{(q[-1] - q[0]) / statistics.median(row['step_s']):.0%}",
            f"{pair['ratio_median']:.2f}x ({pair['ratio_p10']:.2f}-{pair['ratio_p90']:.2f})"
            if pair else "-",
            f"{pair['correlation']:+.2f}" if pair else "-",
            f"{host:+.2f}" if host is not None else "-",
        ])  # fmt: skip
    header = [
        "contender", "steps' 10th-90th percentile spread", f"speed against {reference} (10th-90th)",
        "correlation with it", "correlation with the host's matmul time",
    ]  # fmt: skip
    return [
        "",
        "lockstep: one step of each contender in turn, each cycle's steps side by side (a "
        "correlation near +1: they slow down together, so the host moves them, not their code):",
        markdown_table(header, rows, right=[False, True, True, True, True]),
    ]


def _data_lines(report: dict[str, Any]) -> list[str]:
    data = report.get("data")
    if not data:
        return []
    cached, pred = data.get("cached", {}), data.get("predict", {})
    if "decode_resize_images_per_s" not in pred:
        return ["", f"data: {pred.get('error') or cached.get('error')}"]
    line = (
        f"predict, JPEG decode included, {pred['predict_images']} files: leafnet "
        f"{pred['predict_images_per_s']:.1f} images/s (peak RSS {pred['peak_rss_gb']:.2f} GB)"
    )
    keras_pred = data.get("predict_keras", {})
    if "predict_images_per_s" in keras_pred:
        ratio = pred["predict_images_per_s"] / keras_pred["predict_images_per_s"]
        line += (
            f", Keras-TF model.predict on tf.data {keras_pred['predict_images_per_s']:.1f}"
            f" images/s, peak RSS {keras_pred['peak_rss_gb']:.2f} GB (leafnet {ratio:.1f}x)"
        )
    elif "error" in keras_pred:
        line += f", Keras: {keras_pred['error'][:80]}"
    return [
        "",
        f"data: cold decode+resize {pred['decode_resize_images_per_s']:.1f} images/s; "
        f"cached batches {cached.get('cached_images_per_s', float('nan')):.0f} images/s",
        line,
    ]


def _profile_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    if "gpu_busy_share" in report:
        lines += [
            "",
            f"GPU busy (kernel time over wall time, profiled leafnet steps): "
            f"{report['gpu_busy_share']:.0%}",
        ]
    prof = report.get("profile")
    if isinstance(prof, list):
        lines += [
            "",
            "leafnet step profile (self CPU time per step, summed over threads; the banded "
            "block's own rows are mostly the main thread waiting for its workers):",
        ]
        lines += [f"  {p['op']:<45} {p['ms_per_step']:>9.1f} ms  {p['share']:>5.0%}" for p in prof]
    return lines


def format_table(report: dict[str, Any]) -> str:
    """The terminal (and README) table: one row per contender, then the side measurements."""
    lines = [*_header(report), "", _contender_table(report)]
    lines += _breakdown(report) + _lockstep_lines(report) + _data_lines(report)
    lines += _profile_lines(report)
    return "\n".join(lines)
