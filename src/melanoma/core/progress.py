"""Progress that reads well on a terminal and in a log file.

On a terminal, a tqdm bar. Anywhere else (output redirected to a log, a CI job, `make ... > log`) a bar's
carriage returns pile up as fragments, so a plain line is printed every `INTERVAL_S` seconds instead:

    fold 0 test: 2048/10982 img (19%), 85.1 img/s, 24 s

and one more when the loop ends, if it ran long enough to print any. Training's own progress (Keras'
bar) follows the same rule through `TrainingLines`.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

INTERVAL_S = 30.0  # seconds between two plain progress lines


def on_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or stand-in stream
        return False


class LogLines:
    """The part of tqdm's interface the project uses (iterate, update, close, with), printing plain lines."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", disable: bool = False,
                 interval: float | None = None, file=None):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.interval = INTERVAL_S if interval is None else interval
        self.file = file
        self.n = 0
        self.started = self.last = time.monotonic()
        self.printed = False
        self.closed = False

    def _line(self, final: bool = False) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if self.n else ""
        return f"{self.desc}: {done} {self.unit}{share}{rate}, {elapsed:.0f} s{' (done)' if final else ''}"

    def _print(self, text: str) -> None:
        print(text, file=self.file or sys.stderr, flush=True)
        self.printed = True

    def update(self, n: int = 1) -> None:
        if self.disable:
            return
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._print(self._line())

    def close(self) -> None:
        if self.closed or self.disable:
            return
        self.closed = True
        if self.printed:
            self._print(self._line(final=True))

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def bar(iterable=None, total=None, desc: str = "", unit: str = "it", disable: bool = False,
        leave: bool = True, file=None):
    """A tqdm bar on a terminal, plain periodic lines elsewhere (see the module docstring)."""
    if on_terminal(file):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=file)
    return LogLines(iterable, total=total, desc=desc, unit=unit, disable=disable, file=file)


def training_lines(epochs: int, steps: int, interval: float | None = None):
    """A Keras callback that prints plain lines: every `interval` seconds within an epoch (step, loss)
    and one at each epoch's end with its metrics. Used instead of Keras' bar when stdout is not a terminal."""
    # Keras (through TensorFlow) loads only when a model is needed
    from melanoma.core.kerasapi import keras

    class TrainingLines(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.interval = INTERVAL_S if interval is None else interval

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.started = self.last = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                loss = (logs or {}).get("loss")
                shown = f", loss {float(loss):.4f}" if loss is not None else ""
                print(f"  epoch {self.epoch + 1}/{epochs}: step {batch + 1}/{steps}{shown}, "
                      f"{now - self.started:.0f} s", flush=True)

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            first = [key for key in ("loss", "val_auc", "val_loss") if key in logs]
            keys = first + sorted(key for key in logs if key not in first)
            metrics = ", ".join(f"{key} {float(logs[key]):.4g}" for key in keys
                                if isinstance(logs[key], (int, float)) or hasattr(logs[key], "__float__"))
            print(f"epoch {epoch + 1}/{epochs}: {metrics} ({time.monotonic() - self.started:.0f} s)", flush=True)

    return TrainingLines()
