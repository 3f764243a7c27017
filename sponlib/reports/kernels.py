"""The sparse-GEMV benchmark's record (data/results/kernels_h200.json, benchmarks/kernels_h200.py) as
markdown: the headline, the physical limits, each projection against cuBLAS and against TEAL's
kernel, the decoder layer and decoding end to end. Rows without a dtype are bf16 (records
written before the float16 runs)."""

from __future__ import annotations

TABLE_LEVELS = (0.0, 0.5, 0.7)


def _pct(x: float) -> str:
    return f"{x:+.1%}"


def _dtype(row: dict) -> str:
    return row.get("dtype", "bfloat16")


def _headline(summary: dict) -> str:
    text = (
        f"Headline on the {summary['gpu']}, sparsity 0.5, Llama-3-8B shapes, bf16: all seven projections of a "
        f"layer {summary['layer_speedup_at_0.5']:.2f}x cuBLAS on the best path "
        f"({summary['layer_fused_speedup_at_0.5']:.2f}x with q/k/v and gate/up fused, "
        f"{summary.get('layer_seven_launch_speedup_at_0.5', summary['layer_speedup_at_0.5']):.2f}x with seven "
        f"launches), {_pct(summary['overhead_at_0'])} time at sparsity 0"
    )
    if "vs_teal_min_at_0.5" in summary:
        text += (
            f"; against TEAL's kernel (fp16, same harness) at least {summary['vs_teal_min_at_0.5']:.2f}x per "
            f"projection shape and {summary['vs_teal_layer_at_0.5']:.2f}x per layer, each as its model launches it"
        )
    if "e2e_speedup_at_0.5" in summary:
        text += (
            f"; batch-1 decoding {summary['e2e_speedup_at_0.5']:.2f}x dense on the best path against a "
            f"byte-count bound of {summary['e2e_bound_at_0.5']:.2f}x, {_pct(summary['e2e_overhead_at_0'])} time at "
            "sparsity 0"
        )
    if "e2e_fused_vs_teal_at_0.5" in summary:
        text += (
            f"; in the same decoder in fp16, the fused path {summary['e2e_fused_vs_teal_at_0.5']:.2f}x the speed of "
            "TEAL's kernel in every projection"
        )
    return text + ".\n\n"


def parts_made(run: dict) -> list[str]:
    """The parts of a benchmark record that this run measured: those it finished (every part it
    ran, for runs recorded before `parts_done` was), less those a later run superseded."""
    return [p for p in run.get("parts_done", run["parts"]) if p not in run.get("superseded", ())]


def _measured_by(runs: list[dict], part: str) -> int | None:
    """Index of the run whose `part` the record holds: the last that made it."""
    found = [i for i, r in enumerate(runs) if part in parts_made(r)]
    return found[-1] if found else None


def _limits(limits: dict, gemv: list[dict], same_run: bool) -> str:
    ours = {(r["in"], r["out"], r["sparsity"]): r["speedup"] for r in gemv if _dtype(r) == "bfloat16"}
    lines = [
        "| shape | in → out | sparsity | cuBLAS µs | compacted µs | ceiling vs cuBLAS | sponlib vs cuBLAS | 1/(1−s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in limits["compacted"]:
        mine = ours.get((r["in"], r["out"], r["sparsity"]))
        lines.append(
            f"| {r['roles']} | {r['in']} → {r['out']} | {r['sparsity']} | {r['dense_us']:.2f} | "
            f"{r['compacted_us']:.2f} | {r['ceiling_speedup']:.2f} | {'' if mine is None else f'{mine:.2f}'} | "
            f"{r['ideal']:.2f} |"
        )
    gather = ["| piece | random GB/s | consecutive GB/s | efficiency |", "| ---: | ---: | ---: | ---: |"]
    for r in limits["gather"]:
        gather.append(
            f"| {r['piece_bytes']} B | {r['random_GBps']:.0f} | {r['contiguous_GBps']:.0f} | {r['efficiency']:.0%} |"
        )
    return (
        "Physical limits, same GPU, "
        + (
            "same run"
            if same_run
            else "another run than the projection table's (each ratio is taken within its own run: dense "
            "times move by up to 15% between runs)"
        )
        + ": cuBLAS on the compacted weight (only the kept input rows, "
        "contiguous: a perfect gather; the sponlib column is the same shape in the projection table, fused "
        "shapes have none there), and the read rate of random pieces of a 2 GiB buffer against consecutive "
        "pieces, by piece length (a tile of BLOCK_N outputs reads 2·BLOCK_N-byte pieces of each kept row).\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(gather)
        + "\n\n"
    )


def _gemv(rows: list[dict]) -> str:
    lines = [
        "| projection | in → out | sparsity | dense µs | dense GB/s | sparse µs | sparse GB/s | vs cuBLAS | "
        "share of 1/(1−s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["sparsity"] in TABLE_LEVELS and _dtype(r) == "bfloat16":
            lines.append(
                f"| {r['model']} {r['roles']} | {r['in']} → {r['out']} | {r['sparsity']} | {r['dense_us']:.2f} | "
                f"{r['dense_GBps']:.0f} | {r['sparse_us']:.2f} | {r['sparse_GBps']:.0f} | {r['speedup']:.2f} | "
                f"{r['share_of_ideal']:.0%} |"
            )
    return "\n".join(lines) + "\n\n"


def _teal(gemv: list[dict], layers: list[dict]) -> str:
    lines = [
        "| fp16 | sparsity | cuBLAS µs | TEAL µs | sponlib µs | TEAL vs cuBLAS | sponlib vs cuBLAS | sponlib vs TEAL "
        "| max error sponlib / TEAL |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in gemv:
        if "teal_us" in r and r["model"] == "llama3-8b":
            lines.append(
                f"| {r['roles']} {r['in']} → {r['out']} | {r['sparsity']} | {r['dense_us']:.2f} | {r['teal_us']:.2f} | "
                f"{r['sparse_us']:.2f} | {r['teal_speedup']:.2f} | {r['speedup']:.2f} | {r['vs_teal']:.2f} | "
                f"{r['max_error']:.3f} / {r['teal_max_error']:.3f} |"
            )
    for r in layers:
        if "teal_us" in r and r["model"] == "llama3-8b":
            best = min(r["sparse_us"], r["fused_us"])
            lines.append(
                f"| layer (TEAL 5 launches, sponlib best of 7 or 4) | {r['sparsity']} | {r['dense_us']:.1f} | "
                f"{r['teal_us']:.1f} | {best:.1f} | {r['teal_speedup']:.2f} | {r['dense_us'] / best:.2f} | "
                f"{r['vs_teal']:.2f} | |"
            )
    return "\n".join(lines) + "\n\n" if len(lines) > 2 else ""


def _layer(rows: list[dict]) -> str:
    lines = [
        "| model | sparsity | measured | dense µs | sparse µs | vs cuBLAS | fused µs | fused vs cuBLAS | "
        "ideal 1/(1−s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if _dtype(r) == "bfloat16":
            lines.append(
                f"| {r['model']} layer | {r['sparsity']} | {r['measured_sparsity']:.3f} | {r['dense_us']:.1f} | "
                f"{r['sparse_us']:.1f} | {r['speedup']:.2f} | {r['fused_us']:.1f} | {r['fused_speedup']:.2f} | "
                f"{r['ideal']:.2f} |"
            )
    return "\n".join(lines) + "\n\n"


def _e2e(runs: dict) -> str:
    lines = [
        "| model | variant | sparsity | measured | tokens/s | GB/s | vs dense | byte bound |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in runs.items():
        for r in run["rows"]:
            if r["variant"] == "dense":
                lines.append(f"| {name} | dense | 0 | | {r['tokens_per_s']:.1f} | {r['GBps']:.0f} | 1.00 | |")
            elif r["variant"] == "hf-generate":  # transformers' own static-cache generate(), for the baseline
                lines.append(
                    f"| {name} | transformers generate(), static cache"
                    + (
                        " (failed) | 0 | | | | | |"
                        if "error" in r
                        else f" | 0 | | {r['tokens_per_s']:.1f} | | {1 / r['dense_vs_this']:.2f} | |"
                    )
                )
            elif r["sparsity"] in (0.0, 0.25, 0.5, 0.7):
                lines.append(
                    f"| {name} | {r['variant']} | {r['sparsity']} | {r['measured_sparsity']:.3f} | "
                    f"{r['tokens_per_s']:.1f} | {r['GBps']:.0f} | {r['speedup']:.2f} | {r['bound']:.2f} |"
                )
    return "\n".join(lines) + "\n\n"


def _listed(part: dict) -> str:
    rows = part["gemv"]
    lines = [
        "Over a ready list of kept inputs (`--parts listed`, `sponlib.kernels.triton_listed`): the listing "
        "launch alone, the GEMV over ready lists (the time if the producer of x wrote the list), and both "
        "launches, beside the shipped streamed kernel; bf16, speed-up over cuBLAS.\n",
        "| shape | in → out | sparsity | listing µs | GEMV on a ready list | listing + GEMV | shipped |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['roles']} | {r['in']} → {r['out']} | {r['sparsity']} | {r['list_us']:.2f} | "
            f"{r['gemv_speedup']:.2f} | {r['chain_speedup']:.2f} | {r['shipped_speedup']:.2f} |"
        )
    lines += [
        "",
        "The producers of x with their lists written as they go (`sponlib.kernels.triton_producers`), "
        "against torch.compile's version without lists, at sparsity 0.5:\n",
        "| producer | inputs | lists | inputs per chunk | torch.compile µs | with lists µs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in part["producers"]:
        chunk = r.get("list_chunk", "")  # absent in v6's record: one list of all inputs
        lines.append(
            f"| {r['producer']} | {r['in']} | {r['segments']} | {chunk} | {r['compiled_us']:.2f} | "
            f"{r['with_lists_us']:.2f} |"
        )
    if part.get("layer"):
        lines += [
            "",
            "One Llama-3-8B block's projections with the producers between them, speed-up over dense "
            "(cuBLAS and torch.compile's producers): today's fused path, and the producers writing the lists "
            "(o streamed):\n",
            "| sparsity | dense µs | today | listed | listed's down output off today's |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in part["layer"]:
            lines.append(
                f"| {r['sparsity']} | {r['dense_us']:.1f} | {r['today_speedup']:.2f} | {r['listed_speedup']:.2f} | "
                f"{r['down_relative_error']:.4f} |"
            )
    return "\n".join(lines) + "\n\n"


def render_kernels(record: dict) -> str:
    """The whole record as markdown (module docstring)."""
    runs = record["runs"]
    first = runs[-1]
    text = _headline(record["summary"])
    if "limits" in record:
        same_run = _measured_by(runs, "limits") == _measured_by(runs, "gemv")
        text += _limits(record["limits"], record.get("gemv", []), same_run)
    text += _gemv(record["gemv"]) + _teal(record["gemv"], record.get("layer", [])) + _layer(record["layer"])
    if record.get("e2e"):
        text += _e2e(record["e2e"])
    if record.get("listed"):
        text += _listed(record["listed"])
    teal = record.get("teal")
    return (
        text + f"{first['gpu']}, torch {first['torch']}, Triton {first['triton']}, CUDA {first['cuda']}. "
        "Projection and layer rows: each call reads its own weight copy and a fresh N(0, 1) input, the calls "
        "captured in one CUDA graph, the median replay. "
        + (
            f"TEAL: {teal['source']}, sha256 {teal['sparse_gemv_sha256'][:12]}…, loaded from a checkout. "
            if teal
            else ""
        )
        + (
            "Decoding: batch 1, greedy, static KV cache of "
            f'{next(iter(record["e2e"].values()))["max_len"]} tokens, torch.compile(mode="reduce-overhead") for '
            "dense and sparse alike; the SmolLM2 rows use the shipped calibration with SPON folded into biases. "
            if record.get("e2e")
            else ""
        )
        + "Runs (each part names the run that measured it): "
        + "; ".join(f"{', '.join(parts_made(r))}: `{r['command']}`" for r in runs if parts_made(r))
        + "\n"
    )
