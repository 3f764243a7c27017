"""The package's layout keeps its promises: imports run one way, down the layers of
docs/architecture.md; no module imports itself back through a cycle; the maintainers' tooling
stays out of the library's import path; the public API still imports; modules and functions stay
short (modules under 400 lines, function bodies under 60)."""

import ast
import importlib
from pathlib import Path

import pytest

import sponlib

PACKAGE = Path(sponlib.__file__).resolve().parent

# The layers, lowest first. A module may import its own part and the parts of lower layers only;
# parts that share a layer do not import each other. (`""` is the package root, sponlib/__init__.)
LAYERS = (
    {"_version", "errors", "io", "paths", "progress"},
    {"data"},
    {"mixtures"},
    {"models"},
    {"distributed", "sparsity", "pruning", "records"},
    {"spon", "perplexity"},
    {"artifacts"},
    {"masks"},
    {"kernels", "analysis", "tasks"},
    {"viz"},
    {"experiments"},
    {"reports"},
    {"cli"},
    {"", "__main__"},
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = ("sponlib",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_sources() -> dict[str, str]:
    """Module name -> source of every module of the installed package."""
    return {module_name(path): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(module: str, source: str, modules: set[str]) -> set[str]:
    """The sponlib modules `module` imports, at the top or inside functions: `from .x import y`
    counts as an import of the module .x.y when that is a module, else of .x."""
    is_package = module + ".__init__" in modules or any(m.startswith(module + ".") for m in modules)
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "sponlib"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "sponlib":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found - {module}


def part_of(module: str) -> str:
    """The part of the package a module belongs to: sponlib.models.head -> models, sponlib -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layering_violations(sources: dict[str, str]) -> list[str]:
    """Every import that runs up the layers or sideways between parts of one layer."""
    modules = set(sources)
    problems = []
    for module, source in sources.items():
        for target in sorted(imported_modules(module, source, modules)):
            own, other = part_of(module), part_of(target)
            if own == other:
                continue
            if own not in RANK or other not in RANK:
                problems.append(f"{module} -> {target}: {own if own not in RANK else other!r} has no layer")
            elif RANK[other] >= RANK[own]:
                problems.append(
                    f"{module} -> {target}: layer {RANK[own]} ({own}) imports layer {RANK[other]} ({other})"
                )
    return problems


def import_cycles(sources: dict[str, str]) -> list[list[str]]:
    """Cycles of module imports (lazy imports included: a cycle dodged inside a function is still one)."""
    modules = set(sources)
    graph = {m: imported_modules(m, s, modules) & modules for m, s in sources.items()}
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(module) for module in package_sources()}
    assert parts == set(RANK), f"parts without a layer: {parts - set(RANK)}; layers naming no part: {set(RANK) - parts}"


def test_imports_run_down_the_layers():
    assert layering_violations(package_sources()) == []


def test_no_module_imports_itself_back():
    assert import_cycles(package_sources()) == []


def test_an_upward_import_is_caught():
    """The checks see what they are meant to see: an import from a lower layer into a higher one,
    a sideways one, and a cycle, each added to the real package."""
    sources = package_sources()
    upward = {
        **sources,
        "sponlib.models.loading": sources["sponlib.models.loading"] + "\nfrom ..spon import train_spon\n",
    }
    assert layering_violations(upward) == [
        f"sponlib.models.loading -> sponlib.spon: layer {RANK['models']} (models) imports layer {RANK['spon']} (spon)"
    ]
    lazy = {
        **sources,
        "sponlib.sparsity.rules": sources["sponlib.sparsity.rules"]
        + "\n\ndef f():\n    from sponlib.analysis.capture import capture\n",
    }
    assert layering_violations(lazy) == [
        f"sponlib.sparsity.rules -> sponlib.analysis.capture: layer {RANK['sparsity']} (sparsity) imports "
        f"layer {RANK['analysis']} (analysis)"
    ]
    sideways = {**sources, "sponlib.kernels.ops": sources["sponlib.kernels.ops"] + "\nfrom ..analysis import compare\n"}
    assert layering_violations(sideways) == [
        f"sponlib.kernels.ops -> sponlib.analysis.compare: layer {RANK['kernels']} (kernels) imports "
        f"layer {RANK['analysis']} (analysis)"
    ]
    cycle = {
        **sources,
        "sponlib.models.adapters": sources["sponlib.models.adapters"] + "\nfrom .fingerprint import x\n",
    }
    assert ["sponlib.models.adapters", "sponlib.models.fingerprint", "sponlib.models.adapters"] in import_cycles(cycle)


def test_the_maintainers_tooling_is_loaded_by_its_commands_only():
    sources = package_sources()
    importers = {
        module
        for module, source in sources.items()
        if part_of(module) != "reports"
        and any(part_of(t) == "reports" for t in imported_modules(module, source, set(sources)))
    }
    assert importers == {"sponlib.cli.docs"}


def test_the_public_api_imports_from_the_package():
    for name in sponlib.__all__:
        assert getattr(sponlib, name) is not None, name
    for package in ("models", "sparsity", "spon", "analysis", "viz", "kernels"):
        module = importlib.import_module(f"sponlib.{package}")
        for name in module.__all__:
            assert hasattr(module, name), f"sponlib.{package}.{name}"


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body after its docstring: what the formatter spreads a signature over
    is no part of how long a function is to read."""
    body = function.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return function.end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("module", sorted(package_sources()))
def test_modules_and_functions_stay_short(module):
    source = package_sources()[module]
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{module}: split it by concern"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = body_lines(node)
            assert length <= MAX_FUNCTION_LINES, f"{module}.{node.name}: its body has {length} lines"
