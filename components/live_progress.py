"""Live progress of a local pipeline run: kfp.local's output condensed into one line per event.

`condensed_output` captures everything a run prints (the steps' relayed output, kfp.local's own
lines and its cache-hit log records) into a log file, and hands each line, with the thread that
wrote it, to a StepProgress that writes the terminal's view: each step as it starts and ends
(ran, cached, retried, failed with its last lines), and inside training steps the steps, loss,
dev score and ETA (softprompt.training.progress).
"""

import builtins
import contextlib
import io
import logging
import re
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TextIO

from softprompt.training.progress import ProgressEvent, format_duration, parse_progress_line

# ---------------------------------------------------------------- live progress of a local run
# kfp.local prints every step's start and end, relays each step's subprocess output line by line
# (from the thread that runs the step, with parallel loop iterations in threads of their own), and
# logs cache hits at INFO on the root logger. A downstream text filter could not tell which of two
# parallel `train-prompt` steps a line came from, nor see cache hits; inside the runner's process
# both are known, so the condensing happens here, on (thread, line) pairs.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KFP_START = re.compile(r"Executing task '([^']+)'")
_KFP_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_KFP_CACHED = re.compile(r"Task (\S+) cache hit")
_KFP_RETRY = re.compile(r"Task (\S+) failed \(attempt (\d+)/(\d+)\)")
_KFP_PIPELINE = re.compile(r"Pipeline '([^']+)' finished with status (\w+)")


@dataclass
class _Running:
    """A step running in one thread: its label, start time and last output lines."""

    label: str
    started: float
    tail: deque = field(default_factory=lambda: deque(maxlen=15))


class StepProgress:
    """Condenses a kfp.local run's output into one line per event, written to `out`.

    Events: a step starting, ending (with its duration, "ran"), coming from the cache ("cached"),
    retried or failing (with its last output lines), and inside training steps the progress lines
    of softprompt.training.progress (steps, loss, dev score at each evaluation, ETA against the
    budget). A step that runs more than once in a run (the parallel `train-prompt` iterations) is
    labelled `train-prompt`, `train-prompt#2`, ... Each line starts with the run's elapsed time.

    tty=False: every event is a line of its own (logs, CI). tty=True: the step lines between
    evaluations share one status line, redrawn in place, under the permanent lines."""

    def __init__(self, out: TextIO, tty: bool = False, clock=time.monotonic) -> None:
        self.out, self.tty, self.clock = out, tty, clock
        self.started: float | None = None
        self.running: dict[Hashable, _Running] = {}
        self.retrying: dict[Hashable, str] = {}  # thread -> the label a retry keeps
        self.ended: dict[Hashable, str] = {}  # thread -> the label of its last ended step
        self.seen: dict[str, int] = {}  # step name -> times started
        self.status: dict[str, str] = {}  # label -> its latest step line (tty)

    def feed(self, source: Hashable, line: str, now: float | None = None) -> None:
        """One output line, written by thread `source` at time `now` (default: the clock)."""
        now = self.clock() if now is None else now
        if self.started is None:
            self.started = now
        text = _ANSI.sub("", line).strip()
        if match := _KFP_START.search(text):
            self._start(source, match[1], now)
        elif match := _KFP_END.search(text):
            self._end(source, match[1], match[2], now)
        elif match := _KFP_CACHED.search(text):
            self._emit(now, f"{match[1]}: cached")
        elif match := _KFP_RETRY.search(text):
            self._retry(source, match, now)
        elif match := _KFP_PIPELINE.search(text):
            self._emit(now, f"pipeline {match[1]}: {match[2].lower()}")
        elif (event := parse_progress_line(text)) is not None:
            self._progress(source, event, now)
        elif source in self.running and text:
            self.running[source].tail.append(text)

    def _start(self, source: Hashable, name: str, now: float) -> None:
        label = self.retrying.pop(source, None)
        if label is None:
            self.seen[name] = self.seen.get(name, 0) + 1
            count = self.seen[name]
            label = name if count == 1 else f"{name}#{count}"
        self.running[source] = _Running(label, now)
        self._emit(now, f"{label}: started")

    def _end(self, source: Hashable, name: str, status: str, now: float) -> None:
        step = self.running.pop(source, None) or _Running(name, now)
        self.status.pop(step.label, None)
        self.ended[source] = step.label
        took = format_duration(now - step.started)
        if status == "SUCCESS":
            self._emit(now, f"{step.label}: done in {took} (ran)")
            return
        self._emit(now, f"{step.label}: {status} after {took}; its last output lines:")
        for text in step.tail:
            self._emit(now, f"    {text}", stamp=False)

    def _retry(self, source: Hashable, match: re.Match, now: float) -> None:
        # kfp.local reports the failed attempt's end first, then the retry, from the same thread.
        label = self.ended.get(source, match[1])
        self.retrying[source] = label
        self._emit(now, f"{label}: failed attempt {match[2]}/{match[3]}, retrying")

    def _progress(self, source: Hashable, event: ProgressEvent, now: float) -> None:
        step = self.running.get(source)
        label = step.label if step is not None else "training"
        text = f"{label}: step {event.step}/{event.max_steps}"
        if event.kind == "stop":
            self.status.pop(label, None)
            self._emit(now, f"{label}: {event.text}")
            return
        if event.loss is not None:
            text += f" | loss {event.loss:.4f}"
        if event.kind == "eval":
            text += f" | dev {event.metric} {event.score:.4f}"
        text += f" | ETA {event.eta}"
        if event.kind == "step" and self.tty:
            self.status[label] = text
            self._redraw()
            return
        self._emit(now, text)

    def _emit(self, now: float, text: str, stamp: bool = True) -> None:
        if stamp:
            minutes, seconds = divmod(int(now - (self.started or now)), 60)
            text = f"[{minutes}:{seconds:02d}] {text}"
        if self.tty:
            # Clear the status line, print the event above it, then draw the status again.
            self.out.write("\r\x1b[K" + text + "\n")
            self._redraw()
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def _redraw(self) -> None:
        if not self.status:
            return
        width = shutil.get_terminal_size((100, 24)).columns - 1
        self.out.write("\r\x1b[K" + " ; ".join(self.status.values())[:width])
        self.out.flush()

    def close(self) -> None:
        """Clears the status line (tty) so what follows starts on a clean line."""
        if self.tty and self.status:
            self.status.clear()
            self.out.write("\r\x1b[K")
            self.out.flush()


class _LineSplitter(io.TextIOBase):
    """The stdout a local run writes to: each thread's text, cut into lines, goes to the full log
    unchanged and to a StepProgress tagged with the thread. Whole lines per thread keep the
    parallel steps' output from mixing within a line in the log."""

    def __init__(self, log: TextIO, view: StepProgress) -> None:
        self.log, self.view = log, view
        self.partial: dict[int, str] = {}
        self.lock = threading.Lock()

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        source = threading.get_ident()
        with self.lock:
            lines = (self.partial.pop(source, "") + text).split("\n")
            if lines[-1]:
                self.partial[source] = lines[-1]
            for line in lines[:-1]:
                self.log.write(line + "\n")
                self.view.feed(source, line)
            self.log.flush()
        return len(text)

    def flush_partial(self) -> None:
        with self.lock:
            for source, line in self.partial.items():
                self.log.write(line + "\n")
                self.view.feed(source, line)
            self.partial.clear()
            self.log.flush()


@contextlib.contextmanager
def condensed_output(log: TextIO, view: StepProgress):
    """While a local run runs: its full output (kfp.local's lines and each step's relayed
    output) goes to `log`, and `view` condenses it for the terminal. kfp.local's INFO lines on
    the root logger (cache hits, retries) are included."""
    splitter = _LineSplitter(log, view)
    root = logging.getLogger()
    saved = sys.stdout, root.level, root.handlers[:], builtins.print
    handler = logging.StreamHandler(splitter)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
    sys.stdout = splitter
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield splitter
    finally:
        splitter.flush_partial()
        view.close()
        # kfp.local swaps the root handlers and builtins.print (an indenting one) around each
        # step, and parallel steps can leave its versions in place: restore what was there.
        sys.stdout = saved[0]
        root.setLevel(saved[1])
        root.handlers[:] = saved[2]
        builtins.print = saved[3]
