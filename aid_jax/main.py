"""Entry point: `python -m aid_jax.main --config=configs/<name>.py[:variant] --workdir=runs/x`.

Any config field can be overridden on the command line, e.g. `--config.sampler.num_steps=32`.
`config.mode` picks one runner of `RUNNERS`; each imports what its mode needs on first use.
Multi-process runs: `config.distributed` or the AID_JAX_* environment (aid_jax/distributed.py)
start JAX's distributed runtime before any mode touches a device. Compiled programs are kept in
JAX's persistent cache (aid_jax/compile_cache.py; AID_JAX_COMPILATION_CACHE=off turns it off).
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: config.workdir).")


def _sample(config, workdir: str) -> None:
    from aid_jax import generate

    generate.run(config, workdir)


def _pretrain(config, workdir: str) -> None:
    from aid_jax import pretrain

    pretrain.train_and_evaluate(config, workdir)


def _export(config, workdir: str) -> None:
    from aid_jax import pretrain

    out = pretrain.export_backbone(config, workdir, config.export.out)
    print(f"exported the EMA weights of {workdir} to {out}")


def _train_vae(config, workdir: str) -> None:
    """A VAE of the AutoencoderKL family (resuming if the workdir has a checkpoint)."""
    from aid_jax import vae_train

    vae_train.train(config, workdir)


def _export_vae(config, workdir: str) -> None:
    from aid_jax import vae_train

    out = vae_train.export_vae(config, workdir, config.export.out)
    print(f"exported the EMA weights of {workdir} to {out}")


def _train_edm2(config, workdir: str) -> None:
    """EDM2 in a VAE's latent space (resuming if the workdir has a checkpoint)."""
    from aid_jax import edm2_train

    edm2_train.train(config, workdir)


def _export_edm2(config, workdir: str) -> None:
    from aid_jax import edm2_train

    out = edm2_train.export_backbone(config, workdir, config.export.out)
    print(f"exported the EMA weights of {workdir} to {out}")


def _evaluate(config, workdir: str) -> None:
    from aid_jax import evaluate

    evaluate.run(evaluate.evaluation_config(config), workdir)


def _train_aid(config, workdir: str) -> None:
    """AID: train the guidance module (resuming if the workdir has a checkpoint)."""
    from aid_jax.aid import train as aid_train

    aid_train.train(config, workdir)


def _tune(config, workdir: str) -> None:
    """Baseline tuning per NFE budget on the validation images (aid_jax/tune.py)."""
    from aid_jax import tune

    tune.run(config, workdir)


def _aid(config, workdir: str) -> None:
    """AID: train, then evaluate the module against the baselines into <workdir>/eval (the
    evaluation by process 0 alone in a multi-process run)."""
    from aid_jax import distributed, evaluate

    _train_aid(config, workdir)
    if distributed.is_main_process():
        evaluate.run(evaluate.evaluation_config(config, workdir), f"{workdir}/eval")


def _train_deft(config, workdir: str) -> None:
    """DEFT: train the h-network (resuming if the workdir has a checkpoint)."""
    from aid_jax.deft import train as deft_train

    deft_train.train(config, workdir)


def _deft(config, workdir: str) -> None:
    """DEFT: train, then evaluate the h-network against the baselines into <workdir>/eval (by
    process 0 alone in a multi-process run)."""
    from aid_jax import distributed, evaluate
    from aid_jax.deft import train as deft_train

    _train_deft(config, workdir)
    if distributed.is_main_process():
        evaluate.run(deft_train.evaluation_config(config, workdir), f"{workdir}/eval")


RUNNERS = {
    "sample": _sample,
    "pretrain": _pretrain,
    "export": _export,
    "train_vae": _train_vae,
    "export_vae": _export_vae,
    "train_edm2": _train_edm2,
    "export_edm2": _export_edm2,
    "evaluate": _evaluate,
    "tune": _tune,
    "train_aid": _train_aid,
    "aid": _aid,
    "train_deft": _train_deft,
    "deft": _deft,
}
MODES = tuple(RUNNERS)
# Modes that train in the workdir: it is checked (writable) and locked (one writer,
# train_loop.workdir_lock) before their set-up (backbone, data) starts.
TRAINING_MODES = ("pretrain", "train_vae", "train_edm2", "train_aid", "aid", "train_deft", "deft")
# Modes that run in one process only: their work is per image or per file, written as it goes,
# with nothing to share out (the training modes split each batch over the processes; "aid" and
# "deft" then evaluate on process 0 alone, on its own devices).
SINGLE_PROCESS_MODES = ("sample", "export", "export_vae", "export_edm2", "evaluate", "tune")


def run_mode(config, workdir: str) -> None:
    """Run ``config.mode`` in ``workdir`` (a training mode holds the workdir's lock)."""
    if config.mode not in RUNNERS:
        raise app.UsageError(f"config.mode={config.mode!r}; expected one of {MODES}")
    if config.mode in SINGLE_PROCESS_MODES:
        import jax

        if jax.process_count() > 1:
            raise app.UsageError(
                f"config.mode={config.mode!r} runs in one process, and this run has "
                f"{jax.process_count()}: start it without the distributed runtime (unset "
                "AID_JAX_DISTRIBUTED / AID_JAX_COORDINATOR / AID_JAX_NUM_PROCESSES / "
                "AID_JAX_PROCESS_ID, config.distributed.enabled=False); multi-process runs are "
                f"for the training modes {TRAINING_MODES}"
            )
    if config.mode not in TRAINING_MODES:
        RUNNERS[config.mode](config, workdir)
        return
    from aid_jax import train_loop

    with train_loop.workdir_lock(workdir):
        RUNNERS[config.mode](config, workdir)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
    config = _CONFIG.value
    from aid_jax import compile_cache, distributed

    compile_cache.enable()  # warm starts ($AID_JAX_COMPILATION_CACHE; aid_jax/compile_cache.py)
    distributed.initialize(config)  # first: before anything touches a device
    run_mode(config, _WORKDIR.value or config.workdir)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
