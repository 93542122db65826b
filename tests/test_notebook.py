"""launch/colab_tpu.ipynb runs: its first cell's ``SMOKE = True`` executed on the CPU in a real
kernel (nbclient, ipykernel with this interpreter) installs nothing, ports the tiny NVIDIA-format
fixture with ``python -m aid_jax.port``, trains AID for two steps, inpaints a test batch and the
bundled test image, and writes and shows the grids. And the installs of issue 19: every pin of
constraints.txt lies inside its range in pyproject.toml, and every declared dependency is pinned.
"""

from __future__ import annotations

import json
import pathlib
import re
import tomllib

import ipykernel.kernelspec
import nbclient
import nbformat
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "launch" / "colab_tpu.ipynb"
KERNEL = "aid_jax_test"


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> str:
    """A kernel spec that starts ipykernel with this interpreter (not whatever `python3` is)."""
    spec = pathlib.Path(ipykernel.kernelspec.write_kernel_spec())
    target = tmp_path / "jupyter" / "kernels" / KERNEL
    target.parent.mkdir(parents=True)
    spec.rename(target)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def _smoke(nb, out: pathlib.Path):
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    for line in ("SMOKE = False", 'OUT = "runs/colab"'):
        assert re.search(rf"^{re.escape(line)}", first.source, re.M), line
    first.source = first.source.replace("SMOKE = False", "SMOKE = True").replace(
        'OUT = "runs/colab"', f"OUT = {str(out)!r}"
    )
    return nb


@pytest.mark.slow  # ~30 CPU-seconds (a kernel, a port, AID's compile)
def test_notebook_runs_on_the_cpu_with_smoke_sizes(tmp_path, kernel):
    nb = _smoke(nbformat.read(NOTEBOOK, as_version=4), tmp_path / "out")
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name=kernel, resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on any error

    out = tmp_path / "out"
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "CpuDevice" in text  # the CPU, in seconds
    # The fixture pickle, ported here by `python -m aid_jax.port`.
    manifest = json.loads((out / "backbone_edm_ddpmpp_tiny" / "manifest.json").read_text())
    assert manifest
    # AID trained for the smoke config's steps, with its validation and best module.
    rows = [json.loads(r) for r in (out / "aid" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 2
    assert "trained 2 steps" in text
    assert (out / "aid" / "best" / "best.json").is_file()
    # The test batch: 8 rows × (observed, AID, ground truth), 16×16 images upscaled 4×.
    grid = Image.open(out / "test_batch_grid.png")
    assert grid.width > 3 * 16 * 4 and grid.height > 8 * 16 * 4
    # The bundled test image (32×32 gray), centre-cropped and resized to the 16×16 RGB backbone.
    side = Image.open(out / "uploaded_inpainted.png")
    assert side.size == (2 * 64 + 8, 64) and side.mode == "RGB"
    # Both grids were shown (display_data outputs with a PNG).
    shown = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) == 2


# ---------------------------------------------------------------------------------------------
# Installs: ranges in pyproject.toml, the tested versions in constraints.txt


def _requirement(text: str) -> tuple[str, str]:
    name, spec = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)", text.strip()).groups()
    return re.sub(r"[-_.]+", "-", name).lower(), spec


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def _satisfies(version: str, spec: str) -> bool:
    ops = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "==": lambda a, b: a == b}
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op, bound = re.match(r"(>=|<|==)\s*([0-9.]+)$", clause).groups()
        if not ops[op](_version(version), _version(bound)):
            return False
    return True


def test_constraints_pin_every_declared_dependency_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = [*project["dependencies"], *extras["data"], *extras["test"]]
    ranges = dict(_requirement(r) for r in declared if not r.startswith("aid_jax"))
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = _requirement(line)
            assert spec.startswith("=="), line
            pins[name] = spec[2:]
    assert set(pins) == set(ranges), set(pins) ^ set(ranges)
    for name, spec in ranges.items():
        assert not spec.startswith("=="), f"{name}: a range in pyproject.toml, the pin elsewhere"
        assert _satisfies(pins[name], spec), (name, pins[name], spec)
    # The accelerator extras are JAX's own, at the project's JAX.
    for extra, jax_extra in (("cuda12", "cuda12"), ("tpu", "tpu")):
        (req,) = extras[extra]
        assert req.startswith(f"jax[{jax_extra}]")
        assert _satisfies(pins["jax"], _requirement(req)[1]), req
