"""The package's layers: the CLI only parses flags, calls library verbs and prints; the library never imports it."""

import ast
from pathlib import Path

import prompttune

PKG = Path(prompttune.__file__).parent
# What a command may not reach for: tensors, models, training and scoring internals live below the library verbs.
CLI_FORBIDDEN = (
    "torch",
    "transformers",
    "safetensors",
    "prompttune.scorer",
    "prompttune.prefix",
    "prompttune.checkpoint",
    "prompttune.task",
    "prompttune.heads",
    "prompttune.methods",
)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def test_the_cli_holds_no_training_scoring_or_model_code():
    for path in sorted((PKG / "cli").glob("*.py")):
        for module, names in imports(path):
            bad = [f for f in CLI_FORBIDDEN if module == f or module.startswith(f + ".")]
            assert not bad, f"{path.name} imports {module}: call a library verb instead"
            assert "Trainer" not in names, f"{path.name} builds a Trainer: call Task.fit / prompttune.train"


def test_nothing_in_the_library_imports_the_cli():
    for path in sorted(PKG.rglob("*.py")):
        if "cli" in path.relative_to(PKG).parts:
            continue
        for module, _ in imports(path):
            assert not module.startswith("prompttune.cli"), f"{path.relative_to(PKG)} imports {module}"


def test_no_module_outside_a_method_file_branches_on_a_method_name():
    from prompttune.methods import METHODS

    names = [f'"{n}"' for n in METHODS if n != "zero-shot"]
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "methods":
            continue
        text = path.read_text()
        for name in names:
            assert f"== {name}" not in text and f"!= {name}" not in text, f"{rel} branches on {name}"
