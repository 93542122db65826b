"""Hostile files cannot crash, hang or exhaust the loaders (issue 17, points 1 and 2).

Each attack of the issue is built here (``ckpt_writer``'s raw-opcode and raw-zip builders; no
binary blobs) and loaded in a CHILD process under an address-space limit (RLIMIT_AS) and a
timeout, so a crash (SIGSEGV), a hang or a memory blow-up fails the test instead of taking pytest
down. For each case the test asserts: the child exits normally (no signal, no timeout), the load
ends in the project's error (CheckpointError / BackboneError / the module kind's error) naming
the limit and the file, and the marker file that the payloads would create does not exist.
Controls load legitimate files under the same limits, so the limits themselves cannot be what
makes the cases fail. A seeded fuzzer then mutates small valid and malicious pickles, zips and
safetensors files (2,400 mutations in CI, batched per child; ``benchmarks/hostile_files.py``
runs more) with the same assertions.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import ckpt_writer as w
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parent.parent
TESTS = ROOT / "tests"
TINY = TESTS / "testdata" / "edm_ddpmpp_tiny.pkl"  # a valid NVIDIA EDM pickle
SHIPPED = ROOT / "ported_weights" / "fashion_mnist_32"
GiB = 2**30
READER_LIMIT = 3 * GiB  # address space of a child reading files (numpy + jax imported)
ORBAX_LIMIT = 3 * GiB  # the same for Orbax folders: the declared 2**30 float32 are 4 GiB
FUZZ_MUTATIONS = 2_400  # in CI, over FUZZ_CHILDREN child processes
FUZZ_CHILDREN = 2

# The child: sets its address-space limit, runs the cases (one JSON line each, flushed, so a
# crash is attributed to its case), catches only the project's errors as clean refusals.
CHILD = r"""
import json, os, random, resource, sys, tempfile, traceback
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
cases = json.loads(open(sys.argv[2]).read())
from aid_jax.backbones.checkpoint_reader import CheckpointError, read_checkpoint
from aid_jax.backbones.loader import BackboneError, load_backbone
errors = (CheckpointError, BackboneError)

def run(case):
    action, path = case["action"], case.get("path")
    if action == "read":
        read_checkpoint(path)
    elif action == "backbone":
        load_backbone(path)
    elif action == "port":
        from aid_jax import port
        port.port(path, case["dst"])
    elif action == "aid_load":
        import aid_jax
        from aid_jax.aid import api as aid_api
        global errors
        errors = errors + (aid_api.KIND.error,)
        aid_jax.load(path)
    elif action == "restart":  # a training restart: the huge newest checkpoint is skipped
        import warnings
        import jax
        from aid_jax import checkpoint
        good = checkpoint.restore_step_state(path, 1)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), good)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with checkpoint.make_manager(path) as manager:
                step, _, _ = checkpoint.restore_run(manager, abstract, {}, path)
        return {"step": step, "warnings": [str(w.message)[:600] for w in caught]}
    elif action == "fuzz":
        return fuzz(case)
    else:
        raise SystemExit("unknown action " + action)

def fuzz(case):
    import ckpt_writer as w
    seeds = w.fuzz_seeds(case["marker"])
    counts, bad = {}, []
    tmp = tempfile.mkdtemp(dir=case["dir"])
    for index in range(case["start"], case["stop"]):
        name, fmt, data = w.fuzz_case(seeds, index, case["seed"], random.Random)
        path = os.path.join(tmp, "m%d" % index)
        with open(path, "wb") as f:
            f.write(data)
        print(json.dumps({"fuzz_start": index}), flush=True)
        try:
            read_checkpoint(path)
            outcome = "loaded"
        except errors:
            outcome = "refused"
        except BaseException as e:
            outcome = "unexpected"
            bad.append([index, name, type(e).__name__, str(e)[:300]])
        os.unlink(path)
        key = fmt + ":" + outcome
        counts[key] = counts.get(key, 0) + 1
    return {"counts": counts, "unexpected": bad}

for case in cases:
    print(json.dumps({"start": case["id"]}), flush=True)
    out = {"id": case["id"]}
    try:
        out["result"] = run(case)
        out["status"] = "ok"
    except MemoryError:
        out["status"] = "MemoryError"
    except BaseException as e:
        clean = isinstance(e, errors)
        out["status"] = "refused" if clean else "unexpected"
        out["type"] = type(e).__name__
        out["message"] = str(e)[:2000]
        if not clean:
            out["traceback"] = traceback.format_exc()[-3000:]
    print(json.dumps(out), flush=True)
"""


def run_child(cases: list[dict], tmp: pathlib.Path, limit: int, timeout: float) -> dict:
    """Run ``cases`` in one child under ``limit`` bytes of address space; ``{id: result}``.
    A case that did not report (crash, timeout) gets ``status`` 'died' with the return code."""
    spec = tmp / "cases.json"
    spec.write_text(json.dumps(cases))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
        JAX_PLATFORMS="cpu",
        MALLOC_ARENA_MAX="2",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(limit), str(spec)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        stdout, rc, stderr = proc.stdout, proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        rc = "timeout"
    results: dict = {}
    started = None
    last_fuzz = None
    for line in stdout.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "start" in rec:
            started = rec["start"]
        elif "fuzz_start" in rec:
            last_fuzz = rec["fuzz_start"]
        elif "id" in rec:
            results[rec["id"]] = rec
            started = None
    for case in cases:
        if case["id"] not in results:
            where = "while running it" if started == case["id"] else "before it ran"
            fuzz = f" (fuzz mutation {last_fuzz})" if last_fuzz is not None else ""
            results[case["id"]] = {
                "status": "died",
                "message": f"child ended (rc {rc}) {where}{fuzz}; stderr: {stderr[-2000:]}",
                "rc": rc,
            }
    results["__rc__"] = rc
    return results


# --------------------------------------------------------------------------------------------
# The attack corpus: (id, action, file builder, expected outcome). An expected ``None`` message
# means the load must succeed (controls); else the child must refuse cleanly with a message
# matching it (the limit's name), and the message must name the file.

MARKER = "MARKER"


def _tiny() -> bytes:
    return TINY.read_bytes()


def _deep_after_valid() -> bytes:
    return w.append_setitem(_tiny(), w.deep_tuple(300_000), b"N")


READER_CASES = [
    ("control_valid_pickle", "read", _tiny, None),
    ("control_valid_backbone", "backbone", _tiny, None),
    ("deep_tuple_setitem", "read", lambda: w.deep_tuple_pickle("setitem"), "MAX_NESTING_DEPTH"),
    ("deep_tuple_dict", "read", lambda: w.deep_tuple_pickle("dict"), "MAX_NESTING_DEPTH"),
    ("deep_tuple_set", "read", lambda: w.deep_tuple_pickle("set"), "MAX_NESTING_DEPTH"),
    ("deep_tuple_frozenset", "read", lambda: w.deep_tuple_pickle("frozenset"), "MAX_NESTING"),
    ("deep_tuple_additems", "read", lambda: w.deep_tuple_pickle("additems"), "MAX_NESTING"),
    ("deep_tuple_after_valid_read", "read", _deep_after_valid, "MAX_NESTING_DEPTH"),
    ("deep_tuple_after_valid_backbone", "backbone", _deep_after_valid, "MAX_NESTING_DEPTH"),
    ("deep_tuple_after_valid_port", "port", _deep_after_valid, "MAX_NESTING_DEPTH"),
    ("tuple_hash_bomb", "read", w.tuple_hash_bomb, "MAX_HASHED_ELEMENTS"),
    # The reader keeps shared lists shared (fine); the manifest would expand them.
    ("laughs_dataset_kwargs_read", "read", lambda: w.laughs_pickle(_tiny()), None),
    ("laughs_dataset_kwargs", "backbone", lambda: w.laughs_pickle(_tiny()), "MAX_MANIFEST"),
    ("laughs_dataset_kwargs_port", "port", lambda: w.laughs_pickle(_tiny()), "MAX_MANIFEST"),
    ("empty_set_amplification", "read", w.empty_set_bomb, "MAX_PICKLE_OBJECTS"),
    ("set_copy_amplification", "read", w.set_copy_bomb, "PICKLE_COPY"),
    ("zip_bomb_bzip2", "read", lambda: w.zip_bomb(zipfile.ZIP_BZIP2), "INFLATE_BUDGET"),
    ("zip_bomb_deflate", "read", lambda: w.zip_bomb(zipfile.ZIP_DEFLATED), "INFLATE_BUDGET"),
    (
        "zip_member_beyond_declared",
        "read",
        lambda: _lying_zip_member(),
        "inflates beyond its declared",
    ),
    ("safetensors_header_at_limit", "read", w.safetensors_header_bomb, "HEADER_TOKENS"),
    ("safetensors_overlap_copies", "read", w.safetensors_overlap_bomb, "overlap"),
]


def _lying_zip_member() -> bytes:
    """A torch zip whose one storage declares 16 bytes but inflates to 64 MiB (bzip2)."""
    import bz2
    import zlib

    data = w.torch_zip_bytes({"w": w.Tensor.of(np.zeros(4, np.float32))})
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    bomb = bz2.compress(bytes(64 * 2**20))
    records = []
    for name, raw in members:
        if name.endswith("data/0"):
            records.append((name, zipfile.ZIP_BZIP2, bomb, zlib.crc32(raw), len(raw)))
        else:
            records.append((name, 0, raw, zlib.crc32(raw), len(raw)))
    return w.raw_zip(records)


def _build(cases, tmp: pathlib.Path) -> list[dict]:
    out = []
    for case_id, action, build, _ in cases:
        path = tmp / f"{case_id}.bin"
        path.write_bytes(build())
        out.append({"id": case_id, "action": action, "path": str(path), "dst": str(tmp / case_id)})
    return out


@pytest.fixture(scope="module")
def reader_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_reader")
    results = run_child(_build(READER_CASES, tmp), tmp, READER_LIMIT, timeout=240)
    results["__marker__"] = (tmp / MARKER).exists()
    return results


def _check(results: dict, case_id: str, expected: str | None, path_in_message: str | None):
    r = results[case_id]
    assert r["status"] != "died", r["message"]  # no crash (negative rc), no timeout
    assert r["status"] != "MemoryError", f"{case_id}: MemoryError (a limit did not hold)"
    if expected is None:
        assert r["status"] == "ok", r
    else:
        assert r["status"] == "refused", r  # the project's error, not another exception
        assert expected in r["message"], r["message"]
        if path_in_message is not None:
            assert path_in_message in r["message"], r["message"]


@pytest.mark.parametrize("case", READER_CASES, ids=[c[0] for c in READER_CASES])
def test_reader_attack(case, reader_results):
    case_id, _, _, expected = case
    _check(reader_results, case_id, expected, f"{case_id}.bin")
    assert not reader_results["__marker__"]


def test_child_exits_cleanly(reader_results):
    assert reader_results["__rc__"] == 0


# --------------------------------------------------------------------------------------------
# Orbax folders: a ported backbone and AID modules (export and workdir) whose metadata declares
# a 2**30-element parameter (4 GiB of float32); its chunks are deleted, so the folder stays small
# and every value would read as zero — an allocation the size of the declaration.
HUGE = 2**30


def _declare_huge(params_dir: pathlib.Path, prefix: str = "") -> str:
    """Rewrite the zarr metadata of the first array under ``prefix`` to shape [HUGE] and delete
    its chunks (missing chunks read as the fill value)."""
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{params_dir}/"}).result()
    keys = sorted(k.decode() for k in kv.list().result() if k.endswith(b"/.zarray"))
    key = next(k for k in keys if k.startswith(prefix))
    meta = json.loads(kv.read(key).result().value)
    meta["shape"] = [HUGE] + [1] * (len(meta["shape"]) - 1)
    meta["chunks"] = [2**24] + [1] * (len(meta["chunks"]) - 1)
    kv.write(key, json.dumps(meta).encode()).result()
    name = key[: -len("/.zarray")]
    kv.delete_range(ts.KvStore.KeyRange(f"{name}/0", f"{name}/:")).result()  # chunks "0", "0.0"
    return name


def _aid_module(tmp: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A tiny AID export (actor/ + aid_config.json) and workdir (checkpoints/2/state)."""
    import jax

    from aid_jax import checkpoint
    from aid_jax import guidance_module as gm
    from aid_jax.aid import model as aid_model

    kind = gm.get_kind("aid")
    cfg = aid_model.AIDConfig(image_shape=(8, 8, 1), num_steps=2, actor_channels=(4, 4))
    params = jax.tree.map(np.asarray, kind.init(jax.random.key(0), cfg))
    manifest = {"format": kind.format, "format_version": 1, kind.config_key: cfg.to_dict()}
    export, workdir = tmp / "aid_export", tmp / "aid_workdir"
    checkpoint.save_pytree(export / kind.spec.field, params)
    (export / kind.state_file).write_text(json.dumps(manifest))
    workdir.mkdir()
    (workdir / kind.state_file).write_text(json.dumps(manifest))
    with checkpoint.make_manager(workdir / "checkpoints") as manager:
        state = {"step": np.int32(2), kind.ema_entry: params}
        checkpoint.save_train_state(manager, 2, state, {"step": 2})
    return export, workdir


@pytest.fixture(scope="module")
def orbax_results(tmp_path_factory):
    from aid_jax import guidance_module as gm

    tmp = tmp_path_factory.mktemp("hostile_orbax")
    kind = gm.get_kind("aid")
    huge = tmp / "huge_backbone"
    shutil.copytree(SHIPPED, huge)
    _declare_huge(huge / "params")
    export, workdir = _aid_module(tmp)
    huge_export = tmp / "huge_export"
    shutil.copytree(export, huge_export)
    _declare_huge(huge_export / kind.spec.field)
    huge_workdir = tmp / "huge_workdir"
    shutil.copytree(workdir, huge_workdir)
    _declare_huge(huge_workdir / "checkpoints" / "2" / "state", kind.ema_entry)
    restart = tmp / "restart_checkpoints"  # step 1 intact, step 2 declaring a huge array
    shutil.copytree(workdir / "checkpoints", restart)
    shutil.copytree(restart / "2", restart / "1")
    _declare_huge(restart / "2" / "state", kind.ema_entry)
    cases = [
        {"id": "control_shipped", "action": "backbone", "path": str(SHIPPED)},
        {"id": "control_aid_export", "action": "aid_load", "path": str(export)},
        {"id": "huge_backbone", "action": "backbone", "path": str(huge)},
        {"id": "huge_aid_export", "action": "aid_load", "path": str(huge_export)},
        {"id": "huge_aid_workdir", "action": "aid_load", "path": str(huge_workdir)},
        {"id": "huge_restart", "action": "restart", "path": str(restart)},
    ]
    results = run_child(cases, tmp, ORBAX_LIMIT, timeout=300)
    results["__marker__"] = (tmp / MARKER).exists()
    return results


def test_orbax_control_loads(orbax_results):
    _check(orbax_results, "control_shipped", None, None)
    # Past the module (its restore and shape checks), aid_jax.load fails on the missing
    # backbone record: proof that the module itself restored under the same limits.
    r = orbax_results["control_aid_export"]
    assert r["status"] == "refused" and "backbone" in r["message"].lower(), r


def test_orbax_huge_declared_shape_backbone(orbax_results):
    _check(orbax_results, "huge_backbone", f"has shape ({HUGE},", "huge_backbone")


def test_orbax_huge_declared_shape_aid_export(orbax_results):
    _check(orbax_results, "huge_aid_export", f"has shape ({HUGE},", "huge_export")


def test_orbax_huge_declared_shape_aid_workdir(orbax_results):
    _check(orbax_results, "huge_aid_workdir", f"declared with shape ({HUGE},", "huge_workdir")


def test_orbax_huge_declared_shape_training_restart(orbax_results):
    """A restart skips a newest checkpoint declaring a 4 GiB array (refused before allocation,
    under the child's address-space limit) and resumes from the previous one, saying so."""
    r = orbax_results["huge_restart"]
    assert r["status"] == "ok", r
    assert r["result"]["step"] == 1
    (message,) = r["result"]["warnings"]
    assert "restart_checkpoints/2" in message and "checked before anything is allocated" in message
    assert "Resuming from step 1" in message


# --------------------------------------------------------------------------------------------
# The fuzzer: FUZZ_MUTATIONS seeded mutations of small valid and malicious pickles, zips and
# safetensors files, each read in the child; every one must load or be refused cleanly.


def fuzz(tmp: pathlib.Path, seed: int, total: int, children: int, timeout: float) -> dict:
    """Run ``total`` mutations over ``children`` children; merged counts and problems."""
    marker = tmp / MARKER
    per = -(-total // children)
    cases = [
        {
            "id": f"fuzz{c}",
            "action": "fuzz",
            "seed": seed,
            "start": c * per,
            "stop": min(total, (c + 1) * per),
            "marker": str(marker),
            "dir": str(tmp),
        }
        for c in range(children)
    ]
    counts: dict[str, int] = {}
    problems = []
    for case in cases:
        r = run_child([case], tmp, READER_LIMIT, timeout)[case["id"]]
        if r["status"] != "ok":
            problems.append(r)
            continue
        for k, v in r["result"]["counts"].items():
            counts[k] = counts.get(k, 0) + v
        problems += r["result"]["unexpected"]
    return {"counts": counts, "problems": problems, "marker": marker.exists()}


def test_fuzzer(tmp_path):
    out = fuzz(tmp_path, seed=17, total=FUZZ_MUTATIONS, children=FUZZ_CHILDREN, timeout=240)
    assert out["problems"] == []
    assert not out["marker"]
    counts = out["counts"]
    assert sum(counts.values()) == FUZZ_MUTATIONS
    for fmt in ("pickle", "zip", "safetensors"):  # every format was fuzzed, both outcomes seen
        assert counts.get(f"{fmt}:refused", 0) > 50, counts
        assert counts.get(f"{fmt}:loaded", 0) > 0, counts
