"""The house reads one way: every module's imports, read with ``ast``, follow the layers.

webapp's wiring (settings, urls, asgi, celery, serve...) -> adaptation -> devices -> the pure
packages (``adaptation.netadapt``, the measurement core ``devices.measure``). An import is any
``import`` / ``from ... import`` statement, at the top of a module or inside a function, plus the
indirect ones: ``importlib.import_module`` / ``__import__`` / ``apps.get_model`` with a constant
name, and any string constant that names one of our modules (a Celery task name such as
``"adaptation.tasks.run_job"``, a ``"module:function"`` path, a model reference such as
``"adaptation.Job"`` in a foreign key or a migration's dependencies).

Rules without exceptions: the pure packages import neither Django, Celery, Channels nor the apps;
the measurement core's ``__init__`` loads no torch (through anything it imports); the agent
imports only the standard library, numpy, onnxruntime, websockets and that core.

The shared-helpers subpackage of ``webapp`` (``WEBAPP_SHARED``) imports neither app nor the
wiring. Rules the project does not fully meet yet (``devices`` importing ``adaptation``; the apps
importing ``webapp``'s wiring rather than its shared-helpers subpackage, now met) have an explicit
list of today's violations below. The lists may only shrink: an entry that no longer occurs fails
the test, so whoever removes a violation removes its line.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("adaptation", "devices", "webapp")
PURE = ("adaptation.netadapt", "devices.measure")
#: The measurement core: what ``devices/measure/__init__.py`` names, and the agent may import.
CORE = ("devices.measure", "devices.measure.protocol", "devices.measure.signature", "devices.measure.stats")
#: webapp's subpackage of shared web helpers (API conventions, uploads, accounts), which the apps
#: may import; every other webapp module is wiring.
WEBAPP_SHARED = "webapp.lib"
WEB_STACK = {"django", "celery", "channels", "kombu", "daphne", "uvicorn", "rest_framework"}
AGENT_THIRD_PARTY = {"numpy", "onnxruntime", "websockets"}
DYNAMIC_IMPORTERS = {"import_module", "__import__"}

# ---------------------------------------------------------------------------------------------
# Today's violations of the two rules the Django-app half of the layering has still to meet.
# (importer, imported): remove a line when its import goes; the test fails on a stale line.

DEVICES_IMPORTING_ADAPTATION = {
    # The migration that created MeasurementRequest.job, a foreign key to adaptation.Job (0006 made it
    # a plain job_id). It stays as it was: databases migrated through it record it as applied, and
    # editing a migration already applied would give fresh and old databases different schemas.
    ("devices.migrations.0002_measurement_requests_pairing", "adaptation"),
}

APPS_IMPORTING_WEBAPP_WIRING: set[tuple[str, str]] = set()

#: Import cycles left: none (``netadapt.architectures`` reads either kind of architecture, so
#: ``spec`` and ``onnx_import`` no longer import each other).
KNOWN_CYCLES: list[list[str]] = []


# ---------------------------------------------------------------------------------------------
# Reading the imports


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def our_modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "node_modules" not in path.parts:
                modules[module_name(path)] = path
    return modules


def resolve(name: str) -> str:
    """Our module that ``name`` (a module, or an attribute of one) lives in; else its top level."""
    modules = our_modules()
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return parts[0]
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return name.split(".")[0]


def _named_module(text: str) -> str | None:
    """The module a string constant names, if it is a dotted path into our packages (a task
    name, "module:function", "app_label.Model")."""
    text = text.split(":", 1)[0]
    parts = text.split(".")
    if len(parts) < 2 or parts[0] not in PACKAGES or not all(p.isidentifier() for p in parts):
        return None
    return resolve(text)


@lru_cache(maxsize=None)
def imports_of(module: str, names: bool = True) -> frozenset[str]:
    """What ``module`` imports: our modules by dotted name, anything else by its top level;
    ``names=False`` leaves out string constants that name a module (task names, model labels)."""
    path = our_modules()[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(resolve(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(resolve(f"{source}.{alias.name}"))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            constants = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if called in DYNAMIC_IMPORTERS and constants:
                found.add(resolve(constants[0]))
            elif called == "get_model" and constants and constants[0].split(".")[0] in PACKAGES:
                found.add(constants[0].split(".")[0])  # apps.get_model("adaptation", "Job")
        elif (names and isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings):
            named = _named_module(node.value)
            if named:
                found.add(named)
    found.discard(module)
    return frozenset(found)


def closure(start: str) -> set[str]:
    """``start`` and every module of ours it imports, directly or not (parent packages included:
    importing ``a.b`` runs ``a/__init__.py``)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen or module not in our_modules():
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:n]) for n in range(1, len(parts)))
        todo.extend(imports_of(module))
    return seen


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(importers, imported) -> set[tuple[str, str]]:
    return {(module, name) for module in our_modules() if importers(module)
            for name in imports_of(module) if imported(module, name)}


# ---------------------------------------------------------------------------------------------
# The reader itself


def test_the_reader_sees_imports_inside_functions_and_indirect_ones():
    # Inside a function: devices.requests imports the torch-loading runtimes only where it needs them.
    source = (REPO / "devices" / "requests.py").read_text()
    assert "devices.measure.runtimes" in imports_of("devices.requests")
    assert "    from devices.measure.runtimes import" in source
    # A foreign key / migration dependency names the adaptation app by string.
    assert "adaptation" in imports_of("devices.migrations.0002_measurement_requests_pairing")
    # Task names sent as strings (the beat schedule) count as imports of their modules.
    assert {"adaptation.tasks", "devices.models"} <= imports_of("webapp.settings")
    # Relative imports resolve within the package.
    assert "adaptation.netadapt.graph" in imports_of("adaptation.netadapt.loop")
    assert "torch" in imports_of("adaptation.netadapt.loop")
    assert {"adaptation.netadapt.loop", "devices.measure.stats"} <= closure("adaptation.netadapt.cli")


# ---------------------------------------------------------------------------------------------
# Rules enforced without exceptions


def test_the_pure_packages_import_neither_the_web_stack_nor_the_apps():
    def forbidden(module: str, name: str) -> bool:
        if name.split(".")[0] in WEB_STACK:
            return True
        return name.split(".")[0] in PACKAGES and not any(within(name, pure) for pure in PURE)

    assert violations(lambda m: any(within(m, pure) for pure in PURE), forbidden) == set()


def test_the_measurement_core_loads_no_torch():
    reached = closure("devices.measure")
    assert set(CORE) <= reached
    assert reached <= {*CORE, "devices"}  # nothing torch-using of the package, nothing of the apps
    assert {name for module in reached for name in imports_of(module)} & {"torch", "onnx", "torchvision"} == set()


def test_the_agent_imports_only_the_stdlib_numpy_onnxruntime_websockets_and_the_core():
    agent = [m for m in our_modules() if within(m, "devices.agent")]
    assert "devices.agent.client" in agent
    reached = set().union(*(closure(m) for m in agent))
    ours = {m for m in reached if not within(m, "devices.agent")}
    assert ours <= {*CORE, "devices"}, sorted(ours - {*CORE, "devices"})
    outside = {name for module in reached for name in imports_of(module)
               if name.split(".")[0] not in PACKAGES} - set(sys.stdlib_module_names) - AGENT_THIRD_PARTY
    assert outside == set()
    # The download carries exactly what the agent reaches of the core.
    from devices.agent_files import SHARED_FILES

    assert {"devices." + f[:-3].replace("/", ".").removesuffix(".__init__") for f in SHARED_FILES} == set(CORE)


_RUNTIME_PROBE = """
import importlib, json, pkgutil, sys
imported = []
for package_name in %r:
    package = importlib.import_module(package_name)
    imported.append(package_name)
    for info in pkgutil.walk_packages(package.__path__, package_name + "."):
        if info.name.endswith(".__main__"):  # a script: importing it runs the CLI
            continue
        importlib.import_module(info.name)
        imported.append(info.name)
print(json.dumps({"imported": imported, "web": sorted({n.split(".")[0] for n in sys.modules} & set(%r))}))
"""


def test_the_pure_packages_import_at_run_time_without_the_web_stack():
    """What the reader concludes holds when the modules really run (every submodule imported)."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", _RUNTIME_PROBE % (PURE, sorted(WEB_STACK))], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"adaptation.netadapt.loop", "adaptation.netadapt.cli", "devices.measure.local"} <= set(report["imported"])
    assert report["web"] == []


# ---------------------------------------------------------------------------------------------
# Rules with today's violations listed (the list may only shrink)


def test_devices_does_not_import_adaptation_beyond_the_listed_violations():
    found = violations(lambda m: within(m, "devices"), lambda m, name: within(name, "adaptation"))
    assert found - DEVICES_IMPORTING_ADAPTATION == set(), "new imports of adaptation from devices"
    assert DEVICES_IMPORTING_ADAPTATION - found == set(), "violations fixed: remove their lines"


def test_the_shared_web_helpers_import_neither_app():
    found = violations(lambda m: within(m, WEBAPP_SHARED),
                       lambda m, name: within(name, "adaptation") or within(name, "devices")
                       or (within(name, "webapp") and name != "webapp" and not within(name, WEBAPP_SHARED)))
    assert "webapp.lib.api" in our_modules()
    assert found == set()


def test_only_webapp_imports_its_wiring_beyond_the_listed_violations():
    def wiring(module: str, name: str) -> bool:
        return within(name, "webapp") and name != "webapp" and not within(name, WEBAPP_SHARED)

    found = violations(lambda m: not within(m, "webapp"), wiring)
    assert found - APPS_IMPORTING_WEBAPP_WIRING == set(), "new imports of webapp's wiring"
    assert APPS_IMPORTING_WEBAPP_WIRING - found == set(), "violations fixed: remove their lines"


def test_the_webapp_package_loads_nothing_so_pure_code_can_use_its_helpers():
    """``webapp/__init__`` runs on every ``webapp.lib`` import: it must not load the Celery app
    (and with it Django's settings), or the checking worker's children would carry the web stack."""
    probe = ("import sys, webapp.lib.formatting; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))" % sorted(WEB_STACK))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _comment_lines(source: str) -> set[int]:
    """The lines that carry a comment."""
    import io
    import tokenize

    return {token.start[0] for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type == tokenize.COMMENT}


def _comment_only_lines(source: str) -> set[int]:
    return {number for number, line in enumerate(source.splitlines(), 1) if line.lstrip().startswith("#")}


def unexplained_function_imports() -> list[str]:
    """Imports inside functions with no comment saying why. A run of consecutive import lines
    shares a comment: on any of its lines, or on the comment lines directly above it."""
    found = []
    for module, path in sorted(our_modules().items()):
        if ".migrations." in module:
            continue
        source = path.read_text()
        commented, comment_only = _comment_lines(source), _comment_only_lines(source)
        for function in ast.walk(ast.parse(source)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            nodes = sorted((n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))),
                           key=lambda n: n.lineno)
            runs: list[list[ast.stmt]] = []
            for node in nodes:
                if runs and node.lineno == (runs[-1][-1].end_lineno or runs[-1][-1].lineno) + 1:
                    runs[-1].append(node)
                else:
                    runs.append([node])
            for run in runs:
                lines = set(range(run[0].lineno, (run[-1].end_lineno or run[-1].lineno) + 1))
                above = run[0].lineno - 1
                while above in comment_only:
                    lines.add(above)
                    above -= 1
                if not lines & commented:
                    found.append(f"{path.relative_to(REPO)}:{run[0].lineno}")
    return found


def test_every_import_inside_a_function_says_why():
    """Imports belong at the top, where the reader sees them; one inside a function (an optional
    or heavy dependency loaded on purpose, the app registry not ready yet) says why beside it."""
    assert unexplained_function_imports() == []


def import_cycles(package: str) -> list[list[str]]:
    """Cycles of Python imports among ``package``'s modules (task names and model labels left
    out: sending a task by its name is the way out of a cycle, not one)."""
    modules = [m for m in our_modules() if within(m, package)]
    edges = {m: sorted(n for n in imports_of(m, names=False) if n in modules) for m in modules}
    cycles, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for name in edges[module]:
            if state.get(name) == "open":
                cycles.append(stack[stack.index(name):] + [name])
            elif name not in state:
                visit(name)
        stack.pop()
        state[module] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module)
    return cycles


def test_the_apps_modules_import_one_another_without_cycles():
    """Who runs whom reads from the file heads: tasks import the work they run (uploads,
    proposals), and the work sends tasks by name (``adaptation.enqueue``), never by import."""
    assert import_cycles("adaptation") == KNOWN_CYCLES
    assert import_cycles("devices") == []

