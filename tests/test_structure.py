"""The shape of the code: layers that import one way only, no import side effects, small modules."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# From the bottom up; a module may import from its own layer or the layers below it, never
# from a layer above (deferred imports inside functions included).
LAYERS = [
    ("descriptions", {"errors", "outputs", "neon_kernels", "targets", "graph", "manifest", "fast_math", "tables", "input_contract"}),
    ("model and weights", {"model", "checkpoint", "weights", "onnx_file"}),
    ("our ops", {"oversized"}),
    ("graph passes", {"frontend", "rewrite", "layout", "norm", "gelu_gates"}),
    ("schedules", {"schedules"}),
    ("where a library runs", {"params", "runtime", "board", "counting"}),
    ("verification, timing and the board estimate", {"verify", "timing", "estimate"}),
    ("tuning", {"tuning", "tuning_log", "log_lock"}),
    ("build", {"pipeline", "build"}),
    ("jobs: bench, deploy, tune, and the Python API over them", {"bench", "bench_op", "breakdown", "arm_bundle", "tune_job", "api"}),
    ("command line", {"cli"}),
]
LAYER_OF = {name: level for level, (_, names) in enumerate(LAYERS) for name in names}


def _unit(path: Path) -> str:
    """The layer unit a source file belongs to: `schedules`, or parcnet_tvm's top-level module
    or subpackage (`tuning`, `bench`)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return "schedules" if parts[0] == "schedules" else parts[1]


def _imported_units(path: Path) -> set[str]:
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        package = path.relative_to(ROOT).parts[:-1]
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [alias.name] for alias in node.names] if not node.module else [target]
            else:
                names = [(node.module or "").split(".")]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for parts in names:
            if parts[0] == "schedules":
                units.add("schedules")
            elif parts[0] == "parcnet_tvm" and len(parts) > 1:
                units.add(parts[1])
    return units


def _sources():
    return [p for p in sorted((ROOT / "parcnet_tvm").rglob("*.py")) if p.name != "__init__.py" or p.parent.name != "parcnet_tvm"] \
        + sorted((ROOT / "schedules").glob("*.py"))


def test_every_module_has_a_layer():
    assert {_unit(p) for p in _sources()} <= set(LAYER_OF), {_unit(p) for p in _sources()} - set(LAYER_OF)


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in _sources():
        unit = _unit(path)
        for imported in _imported_units(path) - {unit}:
            if LAYER_OF.get(imported, -1) > LAYER_OF[unit]:
                upward.append(f"{path.relative_to(ROOT)} ({LAYERS[LAYER_OF[unit]][0]}) imports {imported} "
                              f"({LAYERS[LAYER_OF[imported]][0]})")
    assert not upward, "\n".join(upward)


def test_importing_the_package_registers_no_metaschedule_rule():
    """Our MetaSchedule rules are registered by an explicit call (tuning does it), not on import."""
    code = ("import tvm_ffi, parcnet_tvm.schedules as schedules, parcnet_tvm.build, parcnet_tvm.tuning.tasks\n"
            "print(tvm_ffi.get_global_func('s_tir.meta_schedule.cpu.oversized_conv', allow_missing=True))\n"
            "schedules.register_metaschedule_rules()\n"
            "print(tvm_ffi.get_global_func('s_tir.meta_schedule.cpu.oversized_conv', allow_missing=True) is not None)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "True"]


def test_the_package_sets_no_environment_and_installs_schedules_inside_itself(tmp_path):
    """Importing parcnet_tvm leaves os.environ alone (threads are set by explicit calls:
    targets.use_threads); schedules/ installs as parcnet_tvm.schedules (pyproject.toml), never
    as a top-level package, and pyproject's package list names every package."""
    code = ("import os, importlib.util; before = dict(os.environ); import parcnet_tvm.schedules as s\n"
            "print(dict(os.environ) == before, s.__file__, importlib.util.find_spec('schedules'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(ROOT / "schedules" / "__init__.py"), "None"]
    listed = re.search(r"^packages = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "parcnet_tvm").rglob("__init__.py")}
    assert set(re.findall(r'"([^"]+)"', listed)) == packages | {"parcnet_tvm.schedules"}


def test_setup_uses_a_venv_only_where_pip_may_not_install(tmp_path):
    """scripts/setup.sh's question (scripts/externally_managed.py, PEP 668) against a stdlib dir
    with and without the EXTERNALLY-MANAGED marker, asked by this Python and by a virtual
    environment's; scripts/python runs .venv's python3 when there is one, else PATH's python3."""
    stdlib = tmp_path / "stdlib"
    stdlib.mkdir()

    def managed(python) -> bool:
        return subprocess.run([python, ROOT / "scripts" / "externally_managed.py", stdlib]).returncode == 0

    assert not managed(sys.executable)
    (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\n")
    assert managed(sys.executable) == (sys.prefix == sys.base_prefix)  # the marker counts outside a venv
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv"], check=True)
    assert not managed(tmp_path / "venv" / "bin" / "python3")

    checkout, on_path = tmp_path / "checkout", tmp_path / "bin"
    (checkout / "scripts").mkdir(parents=True)
    on_path.mkdir()
    shutil.copy(ROOT / "scripts" / "python", checkout / "scripts")
    (on_path / "python3").symlink_to(sys.executable)

    def prefix() -> str:
        done = subprocess.run([checkout / "scripts" / "python", "-c", "import sys; print(sys.prefix)"],
                              capture_output=True, text=True, env={**os.environ, "PATH": f"{on_path}:/usr/bin:/bin"})
        return done.stdout.strip()

    assert prefix() == sys.prefix
    (checkout / ".venv").symlink_to(tmp_path / "venv", target_is_directory=True)
    assert prefix() == str(checkout / ".venv")


def test_scripts_stay_thin():
    """scripts/ parse arguments and call the library: at most 100 lines each."""
    long = {p.name: n for p in sorted((ROOT / "scripts").glob("*.py")) if (n := len(p.read_text().splitlines())) > 100}
    assert not long, long


def test_modules_stay_small():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_the_jobs_functions_stay_short():
    """build, the tune job and tuning/: no function over 60 lines (a stage each, readable whole)."""
    package = ROOT / "parcnet_tvm"
    files = [package / "build.py", package / "tune_job.py", *sorted((package / "tuning").glob("*.py"))]
    long = {f"{path.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
            for path in files for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60}
    assert not long, long


# Small modules whose behaviour the tests of the modules that use them assert.
TESTED_THROUGH_USERS = {
    "errors": "every bad-input test",
    "graph": "rewrite, layout, norm",
    "manifest": "build, verify, bench",
    "tables": "bench, tune",
    "timing": "bench, tune",
    "weights": "build, verify",
    "tuning": "tune (budget, measurement, scheduler, tasks)",
    "cli": "every script test",
    "log_lock": "tuning_log (two runs on one log, a reader beside a run)",
}


def test_tests_mirror_the_modules():
    """tests/test_<name>.py is about parcnet_tvm/<name> (module or subpackage), or for
    test_schedules_<family>.py about schedules/<family>_*.py; every other module has its own."""
    package = ROOT / "parcnet_tvm"
    units = {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | \
        {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    tested = set()
    for test in sorted((ROOT / "tests").glob("test_*.py")):
        name = test.stem.removeprefix("test_")
        if name == "structure":
            continue
        if name.startswith("schedules_"):
            assert list((ROOT / "schedules").glob(f"{name.removeprefix('schedules_')}_*.py")), test.name
            continue
        assert name in units, f"{test.name} names no module of parcnet_tvm"
        tested.add(name)
    assert sorted(units - tested - set(TESTED_THROUGH_USERS)) == []


def test_readme_is_short_and_its_links_resolve():
    """README gives the two commands and the current state in at most 250 lines; dated results
    and details live in docs/, and every file or section it links to exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    headings = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", readme, re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (ROOT / path).exists(), target
        elif anchor:
            assert anchor in headings, target
