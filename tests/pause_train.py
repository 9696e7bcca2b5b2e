"""`python tests/pause_train.py ARGS...` runs `pneumo-ml ARGS...` with one change: at the start of the 0-based
epoch $PAUSE_EPOCH it writes the file $PAUSE_MARKER and blocks until it is killed. A test can then interrupt
training at a known point, however fast or slow the machine is, with nothing left to race."""
import os
import sys
import threading
from pathlib import Path

from pneumo_ml import engine
from pneumo_ml.cli import main


def pause_at(pause_epoch: int, marker: Path) -> None:
    original = engine.train_one_epoch

    def train_one_epoch(*args, epoch, **kwargs):
        if epoch == pause_epoch:
            marker.write_text(str(os.getpid()))
            threading.Event().wait()
        return original(*args, epoch=epoch, **kwargs)

    engine.train_one_epoch = train_one_epoch


if __name__ == "__main__":
    pause_at(int(os.environ["PAUSE_EPOCH"]), Path(os.environ["PAUSE_MARKER"]))
    sys.argv[0] = "pneumo-ml"
    main()
