"""The package structure the code promises (docs/architecture.md): imports run one way, lower
packages learn about higher ones only through registries, library code selects no matplotlib
backend, and nothing cites a file outside the repository."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGES = ("fileio", "classifier", "dvce", "xai", "study", "toyfaces", "experiments",
            "benchmarks", "ldvce")
CAPABILITIES = {"classifier", "dvce", "xai", "study", "toyfaces", "fileio"}
# package -> project packages (or single modules) it may import; everything else is forbidden
ALLOWED = {
    "fileio": set(),
    "classifier": {"fileio"},
    "dvce": {"classifier", "fileio"},
    "xai": {"classifier", "fileio"},
    "study": {"fileio", "dvce.runfolder"},  # the run-folder format (no torch), nothing else of dvce
    # registers the toy LDM with dvce.ldm and the toy classifiers with classifier.registry
    "toyfaces": {"classifier", "dvce", "fileio"},
    "experiments": CAPABILITIES,
    "benchmarks": CAPABILITIES | {"experiments"},  # runs pipelines (e.g. the protocol) to time them
    "ldvce": CAPABILITIES | {"experiments", "benchmarks"},
}
#: The CLI package holds the command line only: no pipeline, experiment or benchmark.
CLI_MODULES = {"__init__.py", "cli.py", "cliparse.py"}


def _imports(path):
    """Every absolute import in a module (top level and inside functions), as dotted names:
    ``from package import name`` gives ``package.name`` (the name may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                yield node.lineno, f"{node.module}.{a.name}"
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def _allowed(pkg: str, name: str) -> bool:
    top = name.split(".")[0]
    if top not in PACKAGES or top == pkg:
        return True
    return any(name == a or name.startswith(a + ".") for a in ALLOWED[pkg])


def _violations():
    found = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            found += [f"{path.relative_to(REPO)}:{lineno} imports {name}"
                      for lineno, name in _imports(path) if not _allowed(pkg, name)]
    return found


def test_imports_follow_the_one_way_dependency_graph():
    assert _violations() == []


def test_the_cli_package_holds_only_the_command_line():
    """``ldvce/`` is the command line: experiments live in ``experiments/``, benchmarks in
    ``benchmarks/``, and the CLI reaches them only inside its command functions, so that
    ``import ldvce.cli`` (``ldvce --help``) loads no experiment and no benchmark."""
    assert {p.name for p in (REPO / "ldvce").glob("*.py")} == CLI_MODULES
    assert not [p for p in (REPO / "ldvce").iterdir() if p.is_dir() and p.name != "__pycache__"]
    tree = ast.parse((REPO / "ldvce" / "cli.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name if isinstance(n, ast.Import) else f"{n.module}.{a.name}"
             for n in top for a in n.names]
    assert not [m for m in names if m.split(".")[0] in ("experiments", "benchmarks")]


def test_nothing_below_the_cli_imports_it():
    found = [f"{p.relative_to(REPO)}:{lineno} imports {name}"
             for pkg in PACKAGES if pkg != "ldvce" for p in (REPO / pkg).rglob("*.py")
             for lineno, name in _imports(p) if name.split(".")[0] == "ldvce"]
    assert found == []


def test_the_checker_sees_violations(tmp_path, monkeypatch):
    """The graph check is not vacuous: a classifier module importing toyfaces is caught, also
    inside a function and through importlib."""
    fake = tmp_path / "classifier"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    import toyfaces.data\n"
                                 "    from importlib import import_module\n"
                                 "    import_module('ldvce.demo')\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES",
                        ("classifier", "toyfaces", "ldvce", "fileio"))
    found = _violations()
    assert any("imports toyfaces.data" in v for v in found)
    assert any("imports ldvce.demo" in v for v in found)


def test_no_library_code_selects_a_matplotlib_backend():
    offenders = [f"{p.relative_to(REPO)}" for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
                 if "matplotlib.use(" in p.read_text()]
    assert offenders == []


def test_code_cites_no_file_outside_the_repository():
    offenders = [f"{p.relative_to(REPO)}" for pkg in PACKAGES + ("tests",)
                 for p in (REPO / pkg).rglob("*.py")
                 if "DESIGN.md" in p.read_text() and p.name != "test_architecture.py"]
    offenders += [n for n in ("pyproject.toml", "Makefile") if "DESIGN.md" in (REPO / n).read_text()]
    assert offenders == []


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                               "OMP_NUM_THREADS": "1"})


def test_importing_ldvce_registers_the_toy_ldm_without_loading_torch():
    out = _python("import sys, ldvce.cli\n"
                  "from dvce.ldm import registered_ldms, resolve_source\n"
                  "from classifier.registry import registered_classifiers\n"
                  "print(registered_ldms(), resolve_source('toy')[1].name, 'torch' in sys.modules,"
                  " 'toy_resnet' in registered_classifiers(),"
                  " any(m.split('.')[0] in ('experiments', 'benchmarks') for m in sys.modules))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['toy']", "toy-ldm", "False", "True", "False"]


def test_register_classifier_resolves_names_and_checks_paths(tmp_path, monkeypatch):
    from classifier import registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"x")
    registry.register_classifier("mine", lambda: ckpt)
    assert "mine" in registry.registered_classifiers()
    assert registry.resolve_classifier("mine") == ckpt
    assert registry.resolve_classifier(str(ckpt)) == ckpt  # a path is a path
    with pytest.raises(ValueError, match="plain word"):
        registry.register_classifier("a/b.ckpt", lambda: ckpt)
    with pytest.raises(FileNotFoundError, match="registered name: .*mine"):
        registry.resolve_classifier(tmp_path / "missing.ckpt")


def test_load_ldm_toy_without_toyfaces_says_what_to_import():
    out = _python("from dvce.ldm import load_ldm, registered_ldms\n"
                  "assert registered_ldms() == []\n"
                  "load_ldm('toy')")
    assert out.returncode != 0
    assert "LDMNotAvailableError" in out.stderr and "import toyfaces" in out.stderr


def test_register_ldm_resolves_a_name_to_a_folder(tmp_path, monkeypatch):
    from dvce import ldm
    monkeypatch.setattr(ldm, "_REGISTRY", dict(ldm._REGISTRY))
    (tmp_path / "unet").mkdir()
    (tmp_path / "vqvae").mkdir()
    ldm.register_ldm("mine", lambda: tmp_path)
    assert "mine" in ldm.registered_ldms() and ldm.resolve_source("mine") == ("mine", tmp_path)
    ldm.register_ldm("empty", lambda: tmp_path / "nothing")
    with pytest.raises(ldm.LDMNotAvailableError, match="not a diffusers LDM folder"):
        ldm.resolve_source("empty")
    with pytest.raises(ValueError, match="plain word"):
        ldm.register_ldm("owner/model", lambda: tmp_path)
    with pytest.raises(ldm.LDMNotAvailableError, match="registered: .*mine"):
        ldm.resolve_source("unknown-name")


def test_no_undefined_names():
    """pyflakes finds no name used without being defined or imported anywhere in the code (a
    lost import once broke ``ldvce bench generate --protocol full`` behind a slow test)."""
    from pyflakes import api, messages, reporter

    class Collect(reporter.Reporter):
        def __init__(self):
            self.found = []

        def flake(self, message):
            if isinstance(message, (messages.UndefinedName, messages.UndefinedLocal,
                                    messages.UndefinedExport)):
                self.found.append(str(message))

        def unexpectedError(self, filename, msg):
            self.found.append(f"{filename}: {msg}")

        def syntaxError(self, filename, msg, lineno, offset, text):
            self.found.append(f"{filename}:{lineno}: {msg}")

    out = Collect()
    for root in (*PACKAGES, "tests", "benchmarks"):
        api.checkRecursive([str(REPO / root)], out)
    assert not out.found, "\n".join(out.found)
