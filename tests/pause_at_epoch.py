"""The pneumo-ml command line with training held at a chosen epoch, for tests that interrupt a run.

    python tests/pause_at_epoch.py MARKER EPOCH RUN_NAME CLI_ARGS...

When the run named RUN_NAME ("*": any run) has trained and logged EPOCH epochs, this writes MARKER and
blocks until a signal arrives. A test waits for MARKER, then signals: the run is interrupted mid-training
whatever the machine's speed, never after it has already finished.
"""
import signal
import sys
from pathlib import Path

from pneumo_ml import engine, train
from pneumo_ml.cli import main


def hold_at(marker: Path, pause_epoch: int, run_name: str) -> None:
    current = {"name": None}
    build, train_one_epoch = train.build, engine.train_one_epoch

    def named_build(config, *args, **kwargs):
        current["name"] = config.name
        return build(config, *args, **kwargs)

    def held_train_one_epoch(*args, epoch: int, **kwargs):
        if epoch == pause_epoch and run_name in ("*", current["name"]) and not marker.exists():
            marker.write_text(f"{current['name']} held before epoch {epoch + 1}\n")
            while True:
                signal.pause()  # the signal's handler raises (KeyboardInterrupt), as it would mid-epoch
        return train_one_epoch(*args, epoch=epoch, **kwargs)

    train.build, engine.train_one_epoch = named_build, held_train_one_epoch


if __name__ == "__main__":  # decoder workers re-import this file as __mp_main__: they must not run the CLI
    # Ctrl-C as in a terminal: a process started in the background (`cmd &`, CI runners) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler at all.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    marker_path, epoch_text, name, *cli_args = sys.argv[1:]
    hold_at(Path(marker_path), int(epoch_text), name)
    sys.argv = ["pneumo-ml", *cli_args]
    main()
