"""Benchmark: a user's whole path on an 8B-shaped model on one GPU, with the wall time and peak
memory of every stage. Writes one JSON record, again after every stage, so a run cut short keeps
the stages it finished.

    python benchmarks/scale_rehearsal.py --shape llama3-8b --json data/results/scale_rehearsal_h200.json
    python benchmarks/scale_rehearsal.py --shape qwen3-8b --json data/results/scale_rehearsal_qwen3_h200.json
    python benchmarks/scale_rehearsal.py --shape tiny --device cpu --steps 2 --json ...   (seconds: the test)

On a machine without the default model's package, `--tokenizer FOLDER` takes its tokenizer files
(tokenizer.json, tokenizer_config.json) from a folder instead.

Stages, as sponlib's Python recipe runs them:
    build       the model from a config with seeded random bf16 weights (nothing is downloaded)
    text        the shipped corpora tokenized by the default model's tokenizer (its ids fit inside
                the larger vocabularies), cut into the protocol's windows: the real data path
    calibrate   dense statistics and sparse-aware refinement at the protocol levels, both rules
    train       SPON at one level (teacher states, steps, validations, a checkpoint to resume from)
    evaluate    perplexity dense / mask / SPON on the in-domain and out-of-domain test texts
    profile     with --profile: three training steps under torch.profiler, the operators that
                take the device time
    passes      with --pass-sizes: training throughput and peak memory at each windows per pass
    export      the vectors folded into biases, a Hugging Face folder with the thresholds; where
                the config cannot take the biases (Qwen3's MLP) the refusal is recorded and the
                user's way on is taken instead: the model and its vectors, applied at run time
    reload      that folder loaded by transformers alone, its perplexity under the exported
                thresholds against the SPON model's
    decode      batch-1 greedy decoding of the reloaded model (else the trained one), dense and
                with the fused sparse kernels

The weights are random, so perplexities and recoveries mean nothing here and the record says so:
it is for the time, the memory and what fails at this size.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import torch

from sponlib.data import load_corpus, load_windows
from sponlib.errors import UnsupportedArchitectureError
from sponlib.experiments import protocol
from sponlib.models import resolve_device
from sponlib.records import write_result

from kernel_shapes import LLAMA3_8B, random_model

TINY = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)
SHAPES = {  # config class name -> fields; the 8B shapes are the published configs' sizes (the kernel
    # benchmark's Llama-3-8B among them)
    "llama3-8b": ("LlamaConfig", LLAMA3_8B),
    "qwen3-8b": (
        "Qwen3Config",
        dict(
            vocab_size=151936,
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=40960,
            rope_theta=1000000.0,
            tie_word_embeddings=False,
        ),
    ),
    # the default tokenizer's 49152 ids; small enough for a CPU test in seconds
    "tiny": ("LlamaConfig", TINY),
    "tiny-qwen3": ("Qwen3Config", TINY | dict(head_dim=16)),
}
QUALITY_NOTE = "random weights: perplexities and recoveries are meaningless; times and memory are the point"


def build_model(shape: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The model of `shape` on `device` with seeded random weights (kernel_shapes.random_model)."""
    import transformers

    class_name, fields = SHAPES[shape]
    return random_model(getattr(transformers, class_name)(**fields), device, dtype, seed)


def load_tokenizer(name_or_folder: str):
    """A known model's tokenizer (its cached folder), or the tokenizer files in a folder."""
    from transformers import AutoTokenizer

    from sponlib.models.gguf import KNOWN_MODELS, prepare_model

    folder = prepare_model(name_or_folder) if name_or_folder in KNOWN_MODELS else Path(name_or_folder)
    if not (folder / "tokenizer_config.json").is_file():
        raise SystemExit(
            f"--tokenizer {name_or_folder}: neither a known model ({', '.join(KNOWN_MODELS)}) nor a folder of "
            "tokenizer files; leave it out to use the default model's tokenizer"
        )
    return AutoTokenizer.from_pretrained(folder)


class Stages:
    """Times each stage and reads its peak memory; the record is written after each one."""

    def __init__(self, device: torch.device, record: dict, save):
        self.device, self.record, self.save = device, record, save

    def run(self, name: str, work):
        """`work()` -> a dict of the stage's results (or None); returns what work returned."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        out = work()
        if cuda:
            torch.cuda.synchronize(self.device)
        stage = {"seconds": round(time.perf_counter() - started, 2)}
        if cuda:
            stage["peak_gpu_GB"] = round(torch.cuda.max_memory_allocated(self.device) / 1e9, 2)
            stage["peak_reserved_GB"] = round(torch.cuda.max_memory_reserved(self.device) / 1e9, 2)
        # ru_maxrss is kilobytes on Linux: the process's peak so far, not this stage's alone
        stage["host_peak_rss_GB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
        if isinstance(out, dict):
            stage |= out.pop("record", {})
        self.record["stages"][name] = stage
        print(f"   {name}: {stage}", flush=True)
        self.save()
        return out


def decode_seconds(model, prompt: torch.Tensor, tokens: int, max_len: int) -> float:
    """Seconds per greedy step at batch 1: compiled with CUDA graphs on a GPU, eager elsewhere."""
    from sponlib.kernels import StaticDecoder

    if prompt.device.type == "cuda":
        return StaticDecoder(model, max_len, mode="compile").seconds_per_token(prompt, tokens)
    decoder = StaticDecoder(model, max_len, mode="eager")
    started = time.perf_counter()
    decoder.generate(prompt, tokens)
    return (time.perf_counter() - started) / tokens


def rehearse(args, record: dict, save) -> None:
    """Every stage in turn (see the module docstring)."""
    from sponlib.perplexity import evaluate
    from sponlib.sparsity import Thresholds, calibrate
    from sponlib.spon import TrainConfig, fold_and_export, train_spon
    from sponlib.spon.export import THRESHOLDS_FILE

    device, dtype = resolve_device(args.device), torch.bfloat16
    stages = Stages(device, record, save)
    progress = True  # bars honour TQDM_DISABLE
    tokenizer = load_tokenizer(args.tokenizer)  # a wrong folder fails before an 8B model is built
    model = stages.run("build", lambda: build_model(args.shape, device, dtype))
    record["parameters_B"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)

    def text():
        counts = {protocol.CALIBRATION_TEXT: args.windows, protocol.VALIDATION_TEXT: args.val_windows}
        counts |= {name: args.eval_windows for name in protocol.TEST_TEXTS}
        windows = {  # the protocol's texts, windows and seed, as the command line picks them
            name: load_windows(load_corpus(name), tokenizer, protocol.WINDOW_LEN, count, protocol.SEED)
            for name, count in counts.items()
        }
        # training windows apart: more of them, from a text that may also be the calibration text
        windows["train"] = load_windows(
            load_corpus(protocol.TRAIN_TEXT), tokenizer, protocol.WINDOW_LEN, args.train_windows, protocol.SEED
        )
        top = max(int(w.ids.max()) for w in windows.values())
        if top >= model.config.vocab_size:
            raise SystemExit(f"token id {top} is outside the {args.shape} vocabulary ({model.config.vocab_size})")
        described = {name: w.describe() for name, w in windows.items()}
        return {"windows": windows, "record": {"texts": described}}

    windows = stages.run("text", text)["windows"]
    tests = [windows[name] for name in protocol.TEST_TEXTS]

    def calibration():
        result = calibrate(
            model, windows[protocol.CALIBRATION_TEXT], refine_levels=protocol.SWEEP_LEVELS, progress=progress
        )
        return {"calibration": result, "record": {"meta": result.meta}}

    calibrated = stages.run("calibrate", calibration)["calibration"]
    mask = calibrated.thresholds(args.level, "teal")
    config = TrainConfig(steps=args.steps, batch_size=args.train_batch, micro_batch=args.micro_batch)
    work = Path(args.work or tempfile.mkdtemp(prefix="rehearsal-"))

    def train():
        vectors, thresholds = train_spon(
            model,
            mask,
            windows["train"].ids,
            windows[protocol.VALIDATION_TEXT].ids,
            config,
            checkpoint=work / "spon.ckpt",
            progress=progress,
        )
        t = vectors.meta["training"]
        kept = ("tokens_per_s", "train_s", "teacher_s", "val_s", "val_kl_base", "val_kl_best", "best_step")
        # windows per pass at the end, and the passes that ran out of memory on the way there
        kept += ("forward_batch", "out_of_memory")
        summary = {k: t[k] for k in kept if k in t}
        return {"vectors": vectors, "thresholds": thresholds, "record": {"config": config.as_dict(), **summary}}

    trained = stages.run("train", train)
    vectors, thresholds = trained["vectors"], trained["thresholds"]

    def evaluation():
        batch = args.eval_batch
        rows = evaluate(model, tests, None, batch, progress)
        rows += evaluate(model, tests, mask, batch, progress)
        rows += evaluate(model, tests, thresholds, batch, progress, spon=vectors)
        return {"record": {"rows": rows, "note": QUALITY_NOTE}}

    stages.run("evaluate", evaluation)
    if args.profile:
        stages.run("profile", lambda: {"record": profile_steps(model, mask, windows, config, device)})
    if args.pass_sizes:
        sizes = [int(size) for size in args.pass_sizes.split(",")]
        stages.run("passes", lambda: {"record": {"sizes": pass_sizes(model, mask, windows, config, device, sizes)}})
    export_dir = work / "export"

    def export():
        try:
            folder = fold_and_export(model, tokenizer, vectors, thresholds, export_dir)
        except UnsupportedArchitectureError as refusal:  # e.g. Qwen3's config has no MLP bias switch
            return {"record": {"refused": str(refusal)}}
        return {"record": {"folder_GB": _folder_gb(folder)}}

    stages.run("export", export)
    prompt = windows[protocol.TEST_TEXTS[0]].ids[:1, :64].to(device)  # (1, 64)
    if "refused" in record["stages"]["export"]:  # the user keeps the model and the SPON file
        alphas = {name: a.to(device) for name, a in vectors.alphas.items()}
        stages.run("decode", lambda: decode(model, thresholds, alphas, prompt, args))
        return
    spon_ppl = record["stages"]["evaluate"]["rows"][-len(tests)]["ppl"]
    model.to("meta")  # its weights leave the device before the export is loaded beside it
    _free(device)

    def reload():
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(export_dir, dtype=dtype, device_map={"": device}).eval()
        loaded.requires_grad_(False)
        exported = Thresholds.load(export_dir / THRESHOLDS_FILE, loaded)
        row = evaluate(loaded, tests[:1], exported, args.eval_batch, progress)[0]
        return {
            "model": loaded,
            "thresholds": exported,
            "record": {"ppl": row["ppl"], "spon_ppl": spon_ppl, "relative_gap": round(row["ppl"] / spon_ppl - 1, 5)},
        }

    reloaded = stages.run("reload", reload)
    stages.run("decode", lambda: decode(reloaded["model"], reloaded["thresholds"], None, prompt, args))


def decode(model, thresholds, alphas, prompt: torch.Tensor, args) -> dict:
    """Batch-1 greedy decoding, dense and through the fused sparse kernels (`alphas` folded in at
    swap-in, where they are not in the weights already)."""
    from sponlib.kernels import swap_in, swap_out

    dense_s = decode_seconds(model, prompt, args.tokens, args.max_len)
    torch._dynamo.reset()
    swap_in(model, thresholds, alphas, fuse=True)
    sparse_s = decode_seconds(model, prompt, args.tokens, args.max_len)
    swap_out(model)
    torch._dynamo.reset()
    return {
        "record": {
            "tokens": args.tokens,
            "dense_tokens_per_s": round(1 / dense_s, 1),
            "sparse_fused_tokens_per_s": round(1 / sparse_s, 1),
            "speedup": round(dense_s / sparse_s, 3),
        }
    }


def profile_steps(model, mask, windows: dict, config, device: torch.device, top: int = 20) -> dict:
    """Where a training step's time goes: three steps on 64 windows (one validation window, no
    refits) under torch.profiler, the operators with the most device time (CPU time on a CPU)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from sponlib.spon import train_spon

    short = dataclasses.replace(config, steps=3, eval_every=3, checkpoint_every=0, track_sparsity=False)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    train, validation = windows["train"].ids[:64], windows[protocol.VALIDATION_TEXT].ids[:1]
    with profile(activities=activities) as profiler:
        train_spon(model, mask, train, validation, short, progress=False)
    ops = [e for e in profiler.key_averages() if e.device_type == DeviceType.CPU]  # operators, not kernels

    def spent(event) -> float:  # microseconds
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    total = sum(spent(e) for e in ops)
    rows = sorted(ops, key=spent, reverse=True)[:top]
    table = [
        {"op": e.key, "calls": e.count, "ms": round(spent(e) / 1e3, 2), "share": round(spent(e) / total, 4)}
        for e in rows
    ]
    return {"steps": short.steps, "clock": "device" if cuda else "cpu", "total_ms": round(total / 1e3, 1), "ops": table}


def pass_sizes(
    model, mask, windows: dict, config, device: torch.device, sizes: list[int], rows: list | None = None
) -> list[dict]:
    """Training throughput and peak memory at each number of windows per pass: six steps on 64
    training windows (one validation window, no refits), steps 3 to 5 timed. A size that runs out
    of memory is recorded as such. Rows go into `rows` as each size ends (a caller that stops
    the work midway keeps the sizes done)."""
    from sponlib.spon import train_spon

    rows = [] if rows is None else rows
    for size in sizes:
        short = dataclasses.replace(
            config, steps=6, micro_batch=size, eval_every=6, checkpoint_every=0, track_sparsity=False
        )
        ended: list[float] = []  # the callback comes after each step's losses are read back: a sync
        _free(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row = {"windows_per_pass": size, "tokens_per_pass": size * protocol.WINDOW_LEN}
        try:
            train_spon(
                model,
                mask,
                windows["train"].ids[:64],
                windows[protocol.VALIDATION_TEXT].ids[:1],
                short,
                progress=False,
                callback=lambda *_: ended.append(time.perf_counter()),
            )
        except torch.OutOfMemoryError:
            rows.append(row | {"out_of_memory": True})
            continue
        tokens = 3 * config.batch_size * protocol.WINDOW_LEN  # steps 3, 4 and 5
        row["tokens_per_s"] = round(tokens / (ended[4] - ended[1]), 1)
        if device.type == "cuda":
            row["peak_gpu_GB"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        rows.append(row)
        print(f"   {row}", flush=True)
    return rows


def limit_memory(device: torch.device, gigabytes: float) -> float:
    """Cap the GPU memory this process may allocate (torch's allocator refuses beyond it, as a
    smaller GPU would); returns the cap in GB."""
    if device.type != "cuda":
        raise SystemExit("--memory-limit-gb caps GPU memory: it needs --device cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    if gigabytes * 1e9 > total:
        raise SystemExit(f"--memory-limit-gb {gigabytes:g} is more than the GPU has ({total / 1e9:.1f} GB)")
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(gigabytes * 1e9 / total, index)
    return gigabytes


def _folder_gb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9, 2)


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's command line (tests parse the commands of its records with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b", help="model config (default llama3-8b)")
    parser.add_argument("--json", required=True, help="record to write (again after every stage)")
    parser.add_argument("--device", default="cuda", help="device (default cuda)")
    parser.add_argument(
        "--tokenizer",
        default=protocol.MODEL,
        help="a known model whose tokenizer cuts the text, or a folder of tokenizer files (default the default model)",
    )
    parser.add_argument("--windows", type=int, default=protocol.WINDOWS, help="calibration windows (default 64)")
    parser.add_argument("--level", type=float, default=0.5, help="sparsity SPON is trained at (default 0.5)")
    parser.add_argument("--steps", type=int, default=250, help="optimiser steps (default 250)")
    parser.add_argument("--train-batch", type=int, default=32, help="windows per step (default 32)")
    parser.add_argument("--micro-batch", type=int, default=0, help="windows per forward pass (default 0: the step's)")
    parser.add_argument("--train-windows", type=int, default=1024, help="distinct training windows (default 1024)")
    parser.add_argument("--val-windows", type=int, default=16, help="validation windows (default 16)")
    parser.add_argument("--eval-windows", type=int, default=64, help="windows per test text (default 64)")
    parser.add_argument("--eval-batch", type=int, default=8, help="windows per evaluation pass (default 8)")
    parser.add_argument("--tokens", type=int, default=128, help="decoding steps timed (default 128)")
    parser.add_argument("--max-len", type=int, default=512, help="decoding cache length (default 512)")
    parser.add_argument(
        "--profile", action="store_true", help="also profile three training steps (the operators that take the time)"
    )
    parser.add_argument(
        "--pass-sizes",
        help="also time six training steps at each of these windows per pass, e.g. 4,8,16 (throughput, peak memory)",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        help="let the process use at most this much GPU memory, as on a smaller GPU (e.g. 80)",
    )
    parser.add_argument("--work", help="folder for the checkpoint and the export (default a new temporary one)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    device = resolve_device(args.device)
    record = {"shape": args.shape, "note": QUALITY_NOTE, "stages": {}}
    if args.memory_limit_gb:
        record["memory_limit_GB"] = limit_memory(device, args.memory_limit_gb)

    def save():
        write_result(args.json, "scale-rehearsal", record, device=device, dtype=torch.bfloat16)

    started = time.perf_counter()
    rehearse(args, record, save)
    record["total_s"] = round(time.perf_counter() - started, 1)
    save()
    print(f"wrote {args.json}: {record['total_s']:.0f} s in all")


if __name__ == "__main__":
    main()
