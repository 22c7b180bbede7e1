"""The shape of the package: a lazy public API, a CLI that imports nothing heavy, and imports that run one way
(scripts → trainers/decoding → model/data → math) with no cycles."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lenvm_rl

PACKAGE = Path(lenvm_rl.__file__).resolve().parent

# The names the library-shape issue promised at the top level, plus the rest of the public API.
PROMISED = ["LenVMGRPOTrainer", "LenVMGRPOConfig", "LenVMPPOTrainer", "LenVMPPOConfig", "LenVMTrainer", "LenVMConfig",
            "LengthGuidedLogitsProcessor", "guided_generate", "predict_length"]


def test_every_public_name_resolves_and_all_is_pinned():
    assert set(PROMISED) <= set(lenvm_rl.__all__)
    assert lenvm_rl.__all__ == sorted(lenvm_rl._EXPORTS)
    for name in lenvm_rl.__all__:
        value = getattr(lenvm_rl, name)
        module = lenvm_rl._EXPORTS[name]
        assert value is getattr(sys.modules[f"lenvm_rl.{module}"], name), name
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        lenvm_rl.NoSuchName  # noqa: B018


def test_every_submodule_export_is_reachable_from_the_top():
    """A name a library module lists in its __all__ is public: it must be importable from lenvm_rl too (constants
    and helpers of the jobs excepted)."""
    missing = []
    for module in ("length_math", "modeling", "signals", "rollout", "rewards", "evaluation", "trainer.critic",
                   "trainer.grpo", "trainer.ppo", "decoding.guided", "decoding.prediction", "decoding.scoring",
                   "study.stats", "study.methods", "study.evaluate"):
        namespace = __import__(f"lenvm_rl.{module}", fromlist=["__all__"])
        for name in namespace.__all__:
            if name.isupper() or name.startswith("_"):
                continue
            if name not in lenvm_rl.__all__:
                missing.append(f"{module}.{name}")
    assert not missing, missing


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_lenvm_rl_imports_neither_trl_nor_deepspeed():
    out = _run("import sys, lenvm_rl; print(sorted(m for m in ('trl', 'deepspeed', 'torch', 'transformers') "
               "if m in sys.modules))")
    assert out.strip() == "[]"


def test_cli_help_imports_neither_trl_nor_torch():
    out = _run("import sys; from lenvm_rl.cli import main; main(['--help']); "
               "print('LOADED', sorted(m for m in ('trl', 'deepspeed', 'torch') if m in sys.modules))")
    assert "grpo" in out and "study" in out and "demo" in out
    assert out.strip().splitlines()[-1] == "LOADED []"


def test_importing_a_trainer_changes_no_cli_and_imports_no_job():
    out = _run("import sys; import lenvm_rl.cli as cli; before = dict(cli.SUBCOMMANDS); "
               "from lenvm_rl import LenVMPPOTrainer, LenVMTrainer, guided_generate; "
               "print(cli.SUBCOMMANDS == before, [m for m in sys.modules if m.startswith('lenvm_rl.scripts')])")
    assert out.strip() == "True []"


def _imports(path: Path) -> set[str]:
    """The lenvm_rl modules a file imports (absolute names), at any depth (function-level imports count)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update([target, *[n for n in names if (PACKAGE.parent / n.replace(".", "/")).with_suffix(".py")
                                    .exists() or (PACKAGE.parent / n.replace(".", "/")).is_dir()]])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in ast.walk(node):  # static-analysis imports never run
                if isinstance(child, ast.ImportFrom) and child.level:
                    found.discard(f"{package}.{child.module}")
    return {name for name in found if name.startswith("lenvm_rl")}


def _layer(module: str) -> int:
    """0 math, 1 model/data, 2 trainers/decoding/study, 3 jobs and the CLI."""
    if module in ("lenvm_rl.length_math", "lenvm_rl.io"):
        return 0
    # the study runner orchestrates the fit-critic and fit-task-critic jobs, so it sits with the jobs: no library
    # module may import it
    if module.startswith(("lenvm_rl.scripts", "lenvm_rl.cli", "lenvm_rl.__main__", "lenvm_rl.study.runner")):
        return 3
    if module.startswith(("lenvm_rl.trainer", "lenvm_rl.decoding", "lenvm_rl.study")):
        return 2
    return 1


def test_imports_run_one_way_and_no_library_module_imports_the_cli():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "lenvm_rl":
            continue  # the lazy public API names every layer
        for imported in _imports(path):
            imported = imported.removesuffix(".__init__")
            if imported.startswith(module + ".") or imported == module:
                continue
            if _layer(imported) > _layer(module):
                offenders.append(f"{module} imports {imported}")
            if _layer(module) < 3 and imported.startswith(("lenvm_rl.cli", "lenvm_rl.scripts")):
                offenders.append(f"library module {module} imports the CLI ({imported})")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles_between_modules():
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "lenvm_rl":
            continue
        graph[module] = {m.removesuffix(".__init__") for m in _imports(path)} - {module, "lenvm_rl"}
    # a package's __init__ re-exporting its own submodules is not a cycle
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}

    def visit(node, stack, done):
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        done.add(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, stack + [node], done)
            if cycle:
                return cycle
        return None

    done: set = set()
    for module in sorted(graph):
        cycle = visit(module, [], done)
        assert cycle is None, " → ".join(cycle)
