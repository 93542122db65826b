"""README.md's code blocks, as written.

Every ```python block runs, in order, in a sandbox folder that looks like a fresh checkout
(`configs/`, `docs/`, `tests/`, `ported_weights/` linked in) plus what earlier README commands
would have made: `runs/aid` (an AID module for the embedded default; here an untrained one, since
training is most of the main job) and a stand-in for the NVIDIA pickle the README names (the
tiny NVIDIA-format fixture under that file name). Every command of a ```bash block is either run
(the port, sampling, the inpainting CLI) or, where running it is the main job itself, mirrored:
its config file and overrides are parsed exactly as `python -m aid_jax.main` parses them, the mode
must exist and the paths it names must resolve. The first block must be the two commands CI runs.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import pytest
from absl import flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(bash|python)\n(.*?)^```$", README, re.S | re.M)
NVIDIA_STAND_IN = "edm-afhqv2-64x64-uncond-vp.pkl"


def _commands(block: str) -> list[list[str]]:
    """The simple commands of a bash block: continuations joined, `&&` split, comments dropped."""
    text = block.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        for part in line.split("&&"):
            argv = shlex.split(part, comments=True)
            if argv:
                out.append(argv)
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> pathlib.Path:
    box = tmp_path_factory.mktemp("readme")
    for name in ("configs", "docs", "tests"):
        (box / name).symlink_to(ROOT / name)
    (box / "ported_weights").mkdir()  # a real folder: the README's port writes into it
    for entry in (ROOT / "ported_weights").iterdir():
        (box / "ported_weights" / entry.name).symlink_to(entry)
    (box / NVIDIA_STAND_IN).write_bytes((ROOT / "tests/testdata/edm_ddpmpp_tiny.pkl").read_bytes())
    _untrained_aid_module(box / "runs" / "aid")
    return box


def _untrained_aid_module(workdir: pathlib.Path) -> None:
    """What `aid_jax.load("runs/aid")` reads after the main job, with an initialised actor."""
    sys.path.insert(0, str(ROOT))
    from configs import fashion_mnist  # noqa: I001 (configs/ is on sys.path only now)

    from aid_jax import backbones, checkpoint
    from aid_jax.aid import model, train

    config = fashion_mnist.get_config(None)
    config.backbone.path = str(ROOT / config.backbone.path)
    backbone = backbones.backbone_from_config(config.backbone)
    cfg = train.aid_config(config, backbone.image_shape)
    workdir.mkdir(parents=True)
    checkpoint.save_pytree(workdir / "actor", model.init_actor(jax.random.key(0), cfg))
    train.write_run_manifest(workdir, cfg, config, backbone.params_sha256)


def _main_config(argv: list[str]):
    """`python -m aid_jax.main ARGS`' config, parsed by the same absl/ml_collections flags."""
    argv = ["aid_jax.main", *argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(argv)
    return values.config


def test_quoted_help_commands_are_the_readme_commands():
    """The commands `python -m aid_jax.inpaint --help` shows as examples are README commands
    (which test_bash_blocks runs), so neither can drift from the other."""
    from aid_jax import inpaint_images

    help_text = inpaint_images._parser().format_help()
    shown = [line.strip() for line in help_text.splitlines() if "docs/examples" in line]
    readme = [" ".join(argv) for lang, b in BLOCKS if lang == "bash" for argv in _commands(b)]
    assert len(shown) == 2 and all(line in readme for line in shown), shown


def test_first_block_is_the_main_job_and_the_ci_command():
    lang, block = BLOCKS[0]
    lines = block.strip().splitlines()
    assert lang == "bash" and len(lines) == 2
    assert (
        lines[0] == "pip install -e . && python -m aid_jax.main --config=configs/fashion_mnist.py"
    )
    assert lines[1].startswith("pip install -e '.[test]' && ")
    assert lines[1].endswith("ruff check . && ruff format --check . && python -m pytest -q -n 2")
    # .ci/run extracts and runs exactly this line.
    extract = re.search(r"^command=\$\((.*)\)$", (ROOT / ".ci/run").read_text(), re.M).group(1)
    got = subprocess.run(
        ["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert got.strip() == lines[1]


def test_python_blocks_run_as_written(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    blocks = [code for lang, code in BLOCKS if lang == "python"]
    assert len(blocks) >= 4
    for i, code in enumerate(blocks):
        namespace: dict = {"__name__": f"readme_block_{i}"}
        try:
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:  # say which block broke
            raise AssertionError(f"README python block {i} failed: {e!r}\n{code}") from e


def _run_module(argv: list[str], cwd: pathlib.Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{shlex.join(argv)} failed:\n{done.stdout}\n{done.stderr}"


RUN_MODES = ("sample",)  # cheap enough to run for real on the stand-in; the rest are mirrored


def test_bash_blocks(sandbox, monkeypatch):
    from aid_jax import main

    monkeypatch.chdir(sandbox)
    seen = set()
    for lang, block in BLOCKS:
        if lang != "bash":
            continue
        for argv in _commands(block):
            if argv[:2] == ["pip", "install"] or argv[0] == "ruff" or argv[2:3] == ["pytest"]:
                seen.add(argv[0])
                continue  # the installs and the test command: CI runs them (.ci/run)
            assert argv[:2] == ["python", "-m"], f"unexpected README command {shlex.join(argv)}"
            module = argv[2]
            seen.add(module)
            if module == "aid_jax.main":
                config = _main_config(argv[3:])
                assert config.mode in main.MODES, shlex.join(argv)
                path = config.get("backbone", {}).get("path")
                assert not path or (sandbox / path).exists(), f"{path} of {shlex.join(argv)}"
                if config.mode in RUN_MODES:
                    _run_module(argv, sandbox)
                    workdir = _flag(argv, "--workdir", config.workdir)
                    assert (sandbox / workdir / "samples.png").is_file()
            elif module in ("aid_jax.port", "aid_jax.inpaint"):
                _run_module(argv, sandbox)
            else:
                raise AssertionError(f"no rule for README command {shlex.join(argv)}")
    assert {"pip", "ruff", "aid_jax.main", "aid_jax.port"} <= seen


def _flag(argv: list[str], name: str, default: str) -> str:
    for a in argv:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default
