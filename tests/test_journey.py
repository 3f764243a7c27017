"""A new user's journey through the README, run as written: the Python quickstart on the real
default model, and the "SPON on your own model" recipe (calibrate -> train -> eval -> export ->
plain transformers) on a tiny model folder. Both blocks are read from the README by their markers,
so the README cannot drift from what is tested; only the model path and the sizes are changed."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# Small sizes for the tiny model, appended to each README command (argparse keeps the last value).
SMALL = {
    "calibrate": "--windows 4 --window-len 64 --refine-windows 2 --refine-levels 0.5",
    "train": "--train-windows 4 --train-window-len 64 --stride 32 --val-windows 2 --steps 2 --train-batch 2 "
    "--eval-every 1 --safeguard-windows 2",
    "eval": "--windows 2 --window-len 64",
    "export": "",
}


def readme_block(marker: str) -> str:
    """The code block right after `<!-- test: marker -->` in the README."""
    found = re.search(rf"<!-- test: {marker} -->\n```\w*\n(.*?)```", README, re.S)
    assert found, f"README.md has no code block marked `<!-- test: {marker} -->`"
    return found.group(1)


def sponlib_command() -> str:
    """The installed console script, as a user runs it (next to this interpreter)."""
    script = Path(sys.executable).parent / "sponlib"
    assert script.is_file(), "the `sponlib` console script is not installed: pip install -e ."
    return str(script)


def _logits(model, ids, thresholds=None, alphas=None):
    from sponlib import Sparsifier

    with torch.no_grad():
        if thresholds is None:
            return model(ids).logits
        with Sparsifier(model, thresholds, alphas=alphas):
            return model(ids).logits


def test_the_recipe_runs_end_to_end_and_the_export_loads_in_plain_transformers(tiny_model_dir, tmp_path):
    lines = [line for line in readme_block("recipe").splitlines() if line.strip()]
    assert lines[0].startswith("M=") and all(line.startswith("sponlib ") for line in lines[1:])
    assert [line.split()[1] for line in lines[1:]] == ["calibrate", "train", "eval", "export", "eval"]
    bindir = os.path.dirname(sponlib_command())
    env = {**os.environ, "M": str(tiny_model_dir), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    for line in lines[1:]:
        command = f"{line} {SMALL[line.split()[1]]}"
        run = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"{command}\n{run.stderr}"
    runs = tmp_path / "runs"
    spon_file, export = runs / "spon-teal-0.5.safetensors", runs / "my-model-spon"
    assert json.loads((runs / "eval.json").read_text())["results"][0]["spon"] is True

    # A fresh interpreter with transformers alone loads the export, no sponlib imported.
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(5))
    torch.save(ids, tmp_path / "ids.pt")
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(export)!r}).eval()\n"
        "assert 'sponlib' not in sys.modules\n"
        f"with torch.no_grad(): torch.save(model(torch.load({str(tmp_path / 'ids.pt')!r})).logits, "
        f"{str(tmp_path / 'plain.pt')!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr

    from transformers import AutoModelForCausalLM

    from sponlib import Thresholds, load_model, load_spon
    from sponlib.spon.export import THRESHOLDS_FILE

    model, _ = load_model(str(tiny_model_dir))
    vectors, thresholds = load_spon(spon_file, model)
    spon = _logits(model, ids, thresholds, vectors.alphas)  # the sponlib SPON model
    # Loaded plainly, the export is the model with the vectors folded into its biases, no mask.
    folded = _logits(vectors.fold_into(load_model(str(tiny_model_dir))[0]), ids)
    torch.testing.assert_close(torch.load(tmp_path / "plain.pt"), folded, atol=1e-5, rtol=1e-5)
    # Under its thresholds it gives the SPON model's logits; the fold rounds differently in the
    # last bits, which an input within rounding of its threshold could pass on (not at this size).
    exported = AutoModelForCausalLM.from_pretrained(export).eval()
    under = _logits(exported, ids, Thresholds.load(export / THRESHOLDS_FILE, exported))
    torch.testing.assert_close(under, spon, atol=2e-5, rtol=1e-5)


def test_the_recipe_shows_the_python_api_that_exists():
    """The README's Python version of the recipe imports names the library has."""
    python = README.split("## SPON on your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", python, re.S)
    imports = [line for block in blocks for line in block.splitlines() if line.startswith(("from ", "import "))]
    assert any("fold_and_export" in line for line in imports) and any(
        "AutoModelForCausalLM" in line for line in imports
    )
    exec("\n".join(imports), {})


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_written(capsys):
    """The quickstart block on the real default model (four windows of 256 tokens: about a minute)."""
    exec(compile(readme_block("quickstart"), "README.md quickstart", "exec"), {"__name__": "__readme__"})
    printed = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert list(printed) == ["dense", "mask", "SPON"]
    ppl = {name: float(text.split()[0]) for name, text in printed.items()}
    assert ppl["dense"] < ppl["SPON"] < ppl["mask"]  # the shipped vectors win back part of the loss
    for name in ("mask", "SPON"):
        assert abs(float(printed[name].rsplit(" ", 1)[1]) - 0.5) <= 0.02  # measured sparsity at the target
