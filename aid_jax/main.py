"""Entry point: `python -m aid_jax.main --config=configs/<name>.py[:variant] --workdir=runs/x`.

Any config field can be overridden on the command line, e.g. `--config.sampler.num_steps=32`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: config.workdir).")

MODES = ("sample", "pretrain", "export", "evaluate", "train_aid", "aid")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
    config = _CONFIG.value
    workdir = _WORKDIR.value or config.workdir
    if config.mode == "sample":
        from aid_jax import generate

        generate.run(config, workdir)
    elif config.mode == "pretrain":
        from aid_jax import pretrain

        pretrain.train_and_evaluate(config, workdir)
    elif config.mode == "export":
        from aid_jax import pretrain

        out = pretrain.export_backbone(config, workdir, config.export.out)
        print(f"exported the EMA weights of {workdir} to {out}")
    elif config.mode == "evaluate":
        from aid_jax import evaluate
        from aid_jax.aid import train as aid_train

        evaluate.run(aid_train.evaluation_config(config), workdir)
    elif config.mode in ("train_aid", "aid"):
        # AID: train the guidance module (resuming if the workdir has a checkpoint); "aid" then
        # evaluates it against the baselines into <workdir>/eval.
        from aid_jax import evaluate
        from aid_jax.aid import train as aid_train

        aid_train.train(config, workdir)
        if config.mode == "aid":
            out = evaluate.run(aid_train.evaluation_config(config, workdir), f"{workdir}/eval")
            del out
    else:
        raise app.UsageError(f"config.mode={config.mode!r}; expected one of {MODES}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
