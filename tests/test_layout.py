"""The package's layout is its data flow (README, "Layout"): stage folders import only earlier stages,
core holds only the base every stage uses and imports nothing above it, the run store (runs/) stands on core
alone, each stage's options live in that stage, nothing imports in a circle or reaches into another module's
private names, functions stay short, and an import inside a function says why it waits.

The imports are read from the source (every `import`, also those inside functions; those under
`if TYPE_CHECKING:` are annotations only and left out), so nothing here depends on what a test imported.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "melanoma"
# The stages in data-flow order: a module may import its own stage and the ones before it (core and the run
# store come first, so every stage may use them).
STAGES = ("core", "runs", "data", "input", "model", "train", "predict", "evaluate", "serve", "kaggle", "tools")
FRONT_DOOR = ("melanoma", "melanoma.__main__", "melanoma.cli")  # the entry points stand above every stage
LONGEST_FUNCTION = 60
# The command contract (cli.py): every command module defines these, each for its own command.
ENTRY_POINTS = ("configure_parser", "command", "main")


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    lines: list[str]
    imports: list[tuple[str, int, list[str]]] = field(default_factory=list)  # (module, line, names taken)

    @property
    def stage(self) -> str | None:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 and self.name not in FRONT_DOOR else None


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_nodes(tree: ast.Module) -> set[int]:
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(child) for statement in node.body for child in ast.walk(statement))
    return hidden


def read_package(root: Path = PACKAGE) -> dict[str, Module]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        name = module_name(path, root)
        modules[name] = Module(name, path, ast.parse(text), text.splitlines())
    for module in modules.values():
        hidden = type_checking_nodes(module.tree)
        for node in ast.walk(module.tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.Import):
                module.imports += [(alias.name, node.lineno, []) for alias in node.names
                                   if alias.name.split(".")[0] == "melanoma"]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "melanoma":
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    if child in modules:  # `from melanoma.core import config`: the module config
                        module.imports.append((child, node.lineno, []))
                    else:
                        module.imports.append((node.module, node.lineno, [alias.name]))
    return modules


def import_edges(modules: dict[str, Module]) -> dict[str, set[str]]:
    edges = {name: set() for name in modules}
    for module in modules.values():
        for target, _, _ in module.imports:
            if target in modules and target != module.name and not module.name.startswith(target + "."):
                if modules[target].path.name == "__init__.py" and target != "melanoma":
                    continue  # a stage folder's __init__ holds only its docstring
                edges[module.name].add(target)
    return edges


def find_circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def backward_imports(modules: dict[str, Module]) -> list[str]:
    found = []
    for module in modules.values():
        if module.name in FRONT_DOOR:
            continue
        if module.stage not in STAGES:
            found.append(f"{module.name}: in no stage folder ({', '.join(STAGES)})")
            continue
        for target, line, _ in module.imports:
            stage = modules[target].stage if target in modules else None
            if stage is None and target in FRONT_DOOR and target != "melanoma":
                found.append(f"{module.name}:{line} imports the entry point {target}")
            elif stage is not None and STAGES.index(stage) > STAGES.index(module.stage):
                found.append(f"{module.name}:{line} ({module.stage}) imports {target} ({stage}), a later stage")
    return found


def private_imports(modules: dict[str, Module]) -> list[str]:
    found = []
    for module in modules.values():
        aliases = {}
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("melanoma"):
                for alias in node.names:
                    if alias.name.startswith("_") and alias.name != "__version__":
                        found.append(f"{module.name}:{node.lineno} takes {node.module}.{alias.name}")
                    if f"{node.module}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(module.tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.value.id in aliases):
                found.append(f"{module.name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def long_functions(modules: dict[str, Module], limit: int = LONGEST_FUNCTION) -> list[str]:
    return [f"{module.name}.{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for module in modules.values() for node in ast.walk(module.tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


def unexplained_late_imports(modules: dict[str, Module]) -> list[str]:
    """Imports inside a function without a comment on their line or the line above saying why."""
    found = []
    for module in modules.values():
        for function in ast.walk(module.tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here, above = module.lines[node.lineno - 1], module.lines[node.lineno - 2].strip()
                    if "#" not in here and not above.startswith("#"):
                        found.append(f"{module.name}:{node.lineno}: {here.strip()}")
    return sorted(set(found))


def untyped_config_parameters(modules: dict[str, Module]) -> list[str]:
    """Parameters that hold the config (or a section of it) without the `Config` annotation."""
    found = []
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for argument in node.args.args + node.args.kwonlyargs:
                    if (argument.arg == "config" or argument.arg.endswith("_config")) and argument.annotation is None:
                        found.append(f"{module.name}.{node.name}({argument.arg}) line {node.lineno}")
    return found


def same_name_in_two_stages(modules: dict[str, Module]) -> list[str]:
    """Module-level functions whose name another stage's module also defines: one job, two places (or
    two jobs under one name, which a newcomer cannot tell apart). The command contract's entry points
    are the exception: each command module has its own."""
    where: dict[str, set[tuple[str, str]]] = {}
    for module in modules.values():
        for node in module.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in ENTRY_POINTS:
                where.setdefault(node.name, set()).add((module.stage or module.name, module.name))
    return [f"{name}: {', '.join(sorted(name for _, name in places))}" for name, places in sorted(where.items())
            if len({stage for stage, _ in places}) > 1]


FOLD_RULE = "melanoma.core.fold_rule"
# The files of a run that layout names (a literal elsewhere drifts from it); names that are also a data set's
# own files (train.csv, test.csv) are left out.
RUN_FILES = ("config.yaml", "oof.csv", "summary.json", "blend.json", "state.json", "last.keras", "model.keras",
             "model.joblib", "history.csv", "val_epochs.csv", "test.json", "pseudo_labels.csv", "data.json",
             "duplicates.csv", "skipped.csv")
LAYOUT = "melanoma.runs.layout"


def fold_rule_written_out(modules: dict[str, Module]) -> list[str]:
    """A `%` whose operands speak of parts or folds outside core/fold_rule.py: the rule written a second time."""
    found = []
    for module in modules.values():
        if module.name == FOLD_RULE:
            continue
        for node in ast.walk(module.tree):
            # `% 2` (an ISIC 2019 file's parity) and string formatting are not the rule
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) \
                    and not isinstance(node.right, ast.Constant) \
                    and not isinstance(node.left, (ast.Constant, ast.JoinedStr)):
                text = ast.unparse(node)
                if "part" in text or "fold" in text:
                    found.append(f"{module.name}:{node.lineno}: {text}")
    return found


def run_file_literals(modules: dict[str, Module]) -> list[str]:
    """A run file's name as a string literal outside runs/layout.py (which names each once)."""
    found = []
    for module in modules.values():
        if module.name == LAYOUT:
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                found.append(f"{module.name}:{node.lineno}: {node.value!r}")
    return found


ARGUMENTS = "melanoma.core.arguments"


def branches_on_a_family_name(modules: dict[str, Module]) -> list[str]:
    """A comparison of something named family with a string: a stage asking which family it holds instead of
    asking the family (train/families/family.py: Family, Label)."""
    found = []
    for module in modules.values():
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Compare) or not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                continue
            sides = [node.left, *node.comparators]
            named = any("family" in ast.unparse(side) for side in sides if not isinstance(side, ast.Constant))
            if named and any(isinstance(side, ast.Constant) and isinstance(side.value, str) for side in sides):
                found.append(f"{module.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def config_arguments_written_out(modules: dict[str, Module]) -> list[str]:
    """`--set` (and so the --config block it comes with) added by hand outside core/arguments.py."""
    found = []
    for module in modules.values():
        if module.name == ARGUMENTS:
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and any(
                    isinstance(argument, ast.Constant) and argument.value == "--set" for argument in node.args):
                found.append(f"{module.name}:{node.lineno}: --set")
    return found


TREES = "melanoma.train.families.trees"
TREE_FAMILY = "melanoma.train.families.tree_family"


def tree_families_apart(modules: dict[str, Module]) -> list[str]:
    """A family class that fits the trees (its module imports train/families/trees.py) yet extends Family itself
    instead of TreeFamily (train/families/tree_family.py): the copy that tabular and tbp_trees once were."""
    found = []
    for module in modules.values():
        if module.name == TREE_FAMILY or TREES not in {target for target, _, _ in module.imports}:
            continue
        for node in module.tree.body:
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base).split(".")[-1] == "Family"
                                                      for base in node.bases):
                found.append(f"{module.name}:{node.lineno}: {node.name} fits trees but does not extend TreeFamily")
    return found


# core is the base every stage uses, nothing more: a module joins this list on purpose, or goes to its stage
CORE = ("arguments", "config", "environment", "errors", "fold_rule", "hardware", "io_utils", "kerasapi", "metrics",
        "progress", "quiet", "tables", "temporary_names")
# what each layer at the bottom may import: core only itself; the run store (runs/) core and itself
BOTTOM_LAYERS = {"core": ("core",), "runs": ("core", "runs")}
# options of one stage, each at home there: a module or a module-level function of this name elsewhere (core, the
# run store, another stage) is one stage's work in another's room
STAGE_OPTIONS = {"pseudo_labels": "data", "validation_weights": "data", "plots": "evaluate",
                 "gather_oof": "train", "report_oof": "train"}


def core_beyond_the_base(modules: dict[str, Module]) -> list[str]:
    """A module in core/ that is not one of CORE: a run-store or stage module moved into the base."""
    return [f"{module.name}: not one of core's base modules" for module in modules.values()
            if module.stage == "core" and module.name != "melanoma.core" and module.name.split(".")[-1] not in CORE]


def bottom_layers_reaching_up(modules: dict[str, Module]) -> list[str]:
    """An import from core or the run store of anything beyond what BOTTOM_LAYERS allows it."""
    found = []
    for module in modules.values():
        allowed = BOTTOM_LAYERS.get(module.stage)
        if allowed is None:
            continue
        for target, line, _ in module.imports:
            stage = modules[target].stage if target in modules else None
            if stage is not None and stage not in allowed:
                found.append(f"{module.name}:{line} ({module.stage}) imports {target} ({stage})")
    return found


def stage_options_away_from_home(modules: dict[str, Module]) -> list[str]:
    """A module or module-level function named in STAGE_OPTIONS outside the stage that owns it."""
    found = []
    for module in modules.values():
        home = STAGE_OPTIONS.get(module.name.split(".")[-1])
        if home is not None and module.stage != home:
            found.append(f"{module.name}: belongs in {home}/")
        for node in module.tree.body:
            home = STAGE_OPTIONS.get(getattr(node, "name", None))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and home and module.stage != home:
                found.append(f"{module.name}:{node.lineno}: {node.name} belongs in {home}/")
    return found


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return read_package()


def test_every_module_stands_in_a_stage_folder_and_imports_only_earlier_stages(modules):
    assert not backward_imports(modules), "\n".join(backward_imports(modules))


def test_no_import_circle(modules):
    circle = find_circle(import_edges(modules))
    assert circle is None, " -> ".join(circle or [])


def test_no_module_takes_another_modules_private_names(modules):
    assert not private_imports(modules), "\n".join(private_imports(modules))


def test_no_function_is_longer_than_sixty_lines(modules):
    assert not long_functions(modules), "\n".join(long_functions(modules))


def test_imports_inside_functions_say_why_they_wait(modules):
    assert not unexplained_late_imports(modules), "\n".join(unexplained_late_imports(modules))


def test_no_two_stages_define_a_function_of_the_same_name(modules):
    """Each job has one place (README, "Where each job lives"): test prediction, the ensemble and the
    partial rule in predict/, fold data in data/, a fold's training in train/, ..."""
    assert not same_name_in_two_stages(modules), "\n".join(same_name_in_two_stages(modules))


def test_the_fold_rule_is_written_once(modules):
    """`part % folds` lives in core/fold_rule.py; everything else asks it."""
    assert not fold_rule_written_out(modules), "\n".join(fold_rule_written_out(modules))


def test_run_files_are_named_by_layout(modules):
    assert not run_file_literals(modules), "\n".join(run_file_literals(modules))


def test_commands_take_their_config_arguments_from_one_helper(modules):
    assert not config_arguments_written_out(modules), "\n".join(config_arguments_written_out(modules))


def test_nothing_branches_on_a_family_name(modules):
    """Stages call a family's operations and read its Label; none asks which family it is."""
    assert not branches_on_a_family_name(modules), "\n".join(branches_on_a_family_name(modules))


def test_every_tree_family_extends_the_tree_base(modules):
    """What tree families share (checks, fold files, describe, label) is written once, in TreeFamily."""
    assert not tree_families_apart(modules), "\n".join(tree_families_apart(modules))
    fitting = {module.name for module in modules.values() if TREES in {target for target, _, _ in module.imports}}
    assert {"melanoma.train.families.tabular", "melanoma.train.families.tbp_trees"} <= fitting  # the rule sees them


def test_core_holds_only_the_base_every_stage_uses(modules):
    """config, errors, io_utils, tables, metrics, progress, environment and their small helpers; a run's files
    are the run store's (runs/), a stage's options its own."""
    assert not core_beyond_the_base(modules), "\n".join(core_beyond_the_base(modules))
    assert {f"melanoma.core.{name}" for name in CORE} <= set(modules)  # the list names what is there


def test_core_imports_nothing_above_it_and_the_run_store_only_core(modules):
    assert not bottom_layers_reaching_up(modules), "\n".join(bottom_layers_reaching_up(modules))
    store = {"layout", "run_config", "run_results", "fold_state", "run_lock", "seeds"}
    assert {f"melanoma.runs.{name}" for name in store} <= set(modules)  # the rule sees the run store


def test_stage_options_live_in_their_stage(modules):
    """Pseudo-labels and validation weights are options of a fold's data, plots evaluate's, the OOF gathering
    train's: none is in core or the run store."""
    assert not stage_options_away_from_home(modules), "\n".join(stage_options_away_from_home(modules))
    assert {"melanoma.data.pseudo_labels", "melanoma.data.validation_weights", "melanoma.evaluate.plots",
            "melanoma.train.oof"} <= set(modules)


def test_config_parameters_are_typed(modules):
    assert not untyped_config_parameters(modules), "\n".join(untyped_config_parameters(modules))


def test_help_lists_every_command():
    """`python -m melanoma --help` names every command of the command-line contract."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "melanoma", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=PACKAGE.parents[1])
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert {"synth", "folds", "records", "data", "train", "infer", "score", "compare", "report", "blend",
            "shift", "validate", "submit", "leaderboard", "describe", "bench", "serve", "sweep"} <= listed


def test_the_checks_find_what_they_look_for(tmp_path):
    """Each check above fails on a small package made to break it, so a pass means something."""
    root = tmp_path / "melanoma"
    for folder in ("core", "runs", "data", "train", "train/families"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text('"""a stage"""\n')
    (root / "train" / "families" / "trees.py").write_text('"""the trees"""\n')
    (root / "train" / "families" / "stumps.py").write_text("from melanoma.train.families import trees\n\n\n"
                                                           "class Stumps(family.Family):\n    model = trees\n")
    (root / "__init__.py").write_text("")
    (root / "core" / "config.py").write_text("from melanoma.data import records\n")
    (root / "core" / "layout.py").write_text("from melanoma.runs import store\n")  # the run store in core
    (root / "core" / "pseudo_labels.py").write_text('"""a fold\'s data option in core"""\n')
    (root / "runs" / "store.py").write_text("from melanoma.data import records\n\n\n"
                                            "def gather_oof(config: Config):\n    return records\n")
    (root / "data" / "records.py").write_text("from melanoma.core import config\n"
                                              "from melanoma.train.training import _secret\n")
    body = "\n".join(f"    x{i} = {i}" for i in range(LONGEST_FUNCTION))
    (root / "train" / "training.py").write_text(f"def _secret():\n{body}\n    import json\n    return json\n\n\n"
                                                "def fit(config):\n    return config\n\n\n"
                                                "def command(args):\n    return 0\n")
    (root / "data" / "folds.py").write_text("def fit(table):\n    return table\n\n\ndef command(args):\n"
                                            "    args.add_argument('--set')\n    return 0\n\n\ndef own(frame, folds):\n"
                                            "    frame.to_json('data.json')\n    return frame.part % folds == 0\n\n\n"
                                            "def kind(config: Config):\n    return config.model.family != 'cnn'\n")
    broken = read_package(root)
    assert find_circle(import_edges(broken)) == ["melanoma.core.config", "melanoma.data.records",
                                                 "melanoma.core.config"]
    assert backward_imports(broken) == [
        "melanoma.core.config:1 (core) imports melanoma.data.records (data), a later stage",
        "melanoma.core.layout:1 (core) imports melanoma.runs.store (runs), a later stage",
        "melanoma.data.records:2 (data) imports melanoma.train.training (train), a later stage",
        "melanoma.runs.store:1 (runs) imports melanoma.data.records (data), a later stage"]
    assert private_imports(broken) == ["melanoma.data.records:2 takes melanoma.train.training._secret"]
    assert long_functions(broken) == ["melanoma.train.training._secret (63 lines, line 1)"]
    assert unexplained_late_imports(broken) == ["melanoma.train.training:62: import json"]
    assert untyped_config_parameters(broken) == ["melanoma.train.training.fit(config) line 66"]
    assert same_name_in_two_stages(broken) == ["fit: melanoma.data.folds, melanoma.train.training"]
    assert fold_rule_written_out(broken) == ["melanoma.data.folds:12: frame.part % folds"]
    assert run_file_literals(broken) == ["melanoma.data.folds:11: 'data.json'"]
    assert config_arguments_written_out(broken) == ["melanoma.data.folds:6: --set"]
    assert branches_on_a_family_name(broken) == ["melanoma.data.folds:16: config.model.family != 'cnn'"]
    assert tree_families_apart(broken) == ["melanoma.train.families.stumps:4: Stumps fits trees but does not extend "
                                           "TreeFamily"]
    assert core_beyond_the_base(broken) == ["melanoma.core.layout: not one of core's base modules",
                                            "melanoma.core.pseudo_labels: not one of core's base modules"]
    assert bottom_layers_reaching_up(broken) == [
        "melanoma.core.config:1 (core) imports melanoma.data.records (data)",
        "melanoma.core.layout:1 (core) imports melanoma.runs.store (runs)",
        "melanoma.runs.store:1 (runs) imports melanoma.data.records (data)"]
    assert stage_options_away_from_home(broken) == ["melanoma.core.pseudo_labels: belongs in data/",
                                                    "melanoma.runs.store:4: gather_oof belongs in train/"]


def test_every_command_loads_without_tensorflow():
    """Every command but bench starts in a fraction of the 4-6 s TensorFlow takes: its module and what it
    imports at the top never load TensorFlow, scikit-learn's metrics or matplotlib, so train and infer check
    the config before TensorFlow loads; the work that needs them imports them when it runs (with a comment
    saying so)."""
    import subprocess
    import sys

    probe = ("import sys\n"
             "from melanoma import cli\n"
             "cli.build_parser(only=sys.argv[1])\n"
             "heavy = ('tensorflow', 'keras', 'tf_keras', 'sklearn.metrics', 'matplotlib')\n"
             "print(','.join(module for module in heavy if module in sys.modules) or '-')\n")
    from melanoma import cli

    runs = {name: subprocess.Popen([sys.executable, "-c", probe, name], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=PACKAGE.parents[1])
            for name in cli.COMMANDS}
    loaded = {}
    for name, process in runs.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        loaded[name] = out.strip()
    assert set(loaded) == {"synth", "folds", "records", "data", "train", "infer", "score", "compare", "report",
                           "blend", "shift", "validate", "submit", "leaderboard", "describe", "bench", "serve",
                           "run-dir", "sweep"}
    # bench measures TensorFlow's pipelines whatever it is asked, so its module may load it; train and infer
    # check the config, the files and the folders first, and load TensorFlow only then (issue: a config typo
    # took 5-12 s to report)
    assert {name: heavy for name, heavy in loaded.items() if heavy != "-"} == (
        {"bench": loaded["bench"]} if loaded["bench"] != "-" else {})
