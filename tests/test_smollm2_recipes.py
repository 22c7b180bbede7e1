"""The SmolLM2 recipes (recipes/smollm2/*.yaml) are checked, not run: they need the real model and take minutes to
hours on a CPU. Every key must be an option of the subcommand the recipe names in its `# Run:` line, every recipe must
parse into that subcommand's dataclasses, say how long it takes, and the paths must chain: each `runs/...` input is
the output of an earlier recipe (or of `lenvm-rl import-gguf`), and each data file exists."""

import dataclasses
import importlib
import re
from pathlib import Path

import pytest
import yaml

from lenvm_rl.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes" / "smollm2").glob("*.yaml"))
RUN_LINE = re.compile(r"^# Run:\s+(?:OMP_NUM_THREADS=1\s+)?lenvm-rl (\S+) --config (recipes/smollm2/\S+\.yaml)", re.M)
IMPORTED_MODEL = "runs/smollm2-135m-instruct"   # written by `lenvm-rl import-gguf --model smollm2-135m-instruct`

# keys that name an input path, and keys that name an output directory
INPUT_KEYS = ("policy", "model_name_or_path", "rollouts", "critic", "critic_model_name_or_path", "dataset",
              "dataset_name", "prompts_file", "eval_dataset")
# values of those keys that a study recipe uses as words, not paths (critic: train, policy/dataset: builtin)
KEYWORDS = ("train", "builtin")
OUTPUT_KEYS = ("output_dir", "output_file")


def _recipe(path):
    text = path.read_text()
    match = RUN_LINE.search(text)
    assert match, f"{path.name}: no '# Run:  lenvm-rl <subcommand> --config recipes/smollm2/...' line"
    assert match.group(2) == f"recipes/smollm2/{path.name}", f"{path.name}: the Run line names another file"
    return match.group(1), yaml.safe_load(text), text


def test_there_are_recipes_for_the_whole_pipeline():
    subcommands = {_recipe(path)[0] for path in RECIPES}
    assert {"rollout", "train-critic", "eval-critic", "eval-length-control", "grpo"} <= subcommands


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_keys_are_options_of_its_subcommand(path):
    subcommand, recipe, text = _recipe(path)
    assert subcommand in SUBCOMMANDS, f"{path.name}: unknown subcommand {subcommand}"
    job = importlib.import_module(f"lenvm_rl.scripts.{SUBCOMMANDS[subcommand][0]}")
    fields = {field.name for cls in job.DATACLASSES for field in dataclasses.fields(cls)}
    unknown = sorted(set(recipe) - fields)
    assert not unknown, f"{path.name}: keys {unknown} are not options of `lenvm-rl {subcommand}`"
    assert re.search(r"[Ee]xpected wall time: about \d+ minutes", text), f"{path.name}: no expected wall time"
    if subcommand in ("train-critic", "grpo"):
        assert recipe.get("use_cpu") is True and recipe.get("bf16", False) is False


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_into_the_dataclasses(path, tmp_path, monkeypatch):
    from trl import TrlParser

    subcommand, _, _ = _recipe(path)
    job = importlib.import_module(f"lenvm_rl.scripts.{SUBCOMMANDS[subcommand][0]}")
    # somewhere without runs/: the configs that check their input paths early then take them for hub names
    monkeypatch.chdir(tmp_path)
    parsed = TrlParser(job.DATACLASSES).parse_args_and_config(["--config", str(path)])
    assert len(parsed) == len(job.DATACLASSES)


def test_paths_chain_from_recipe_to_recipe():
    outputs = {IMPORTED_MODEL}
    inputs = []
    for path in RECIPES:
        _, recipe, _ = _recipe(path)
        for key in OUTPUT_KEYS:
            if isinstance(recipe.get(key), str) and recipe[key].startswith("runs/"):
                outputs.add(recipe[key].rstrip("/"))
        if recipe.get("critic") == "train":   # a study that trains its critic writes it to <output_dir>/critic
            outputs.add(f"{recipe['output_dir'].rstrip('/')}/critic")
        inputs += [(path.name, key, recipe[key]) for key in INPUT_KEYS
                   if isinstance(recipe.get(key), str) and recipe[key] not in KEYWORDS]
    assert inputs
    for name, key, value in inputs:
        if value.startswith("runs/"):
            assert value in outputs, f"{name}: {key} {value} is written by no recipe"
        else:
            assert (ROOT / value).is_file(), f"{name}: {key} {value} does not exist"
