"""Stopping on SIGTERM and SIGINT: what SLURM, ``timeout`` and Ctrl-C send (standard library only).

:func:`handled` (around every ``mitoseg-*`` console script) makes both signals raise
:class:`Interrupted` in the main thread at once, wherever it is: a running block, a decode step,
a measurement. Work that is recorded as it finishes stays recorded (a block of
``mitoseg-predict`` is in its journal once written; outputs are renamed into place only when
complete), so the entry point prints how to resume and exits with ``128 + signum`` (130 for
SIGINT, 143 for SIGTERM), which tells a scheduler that the job was interrupted.

Where stopping at an arbitrary point would leave a state that cannot be saved (an optimiser
step half applied), the code runs inside :func:`deferred`: a signal then only sets a flag, and
the loop calls :func:`check` at its next consistent point (training: after each batch; see
:class:`mitoseg.train.interrupt.StopOnSignal`). A second signal while deferred raises at once.

Lightning registers its own SIGTERM handler while a Trainer runs (``trainer.received_sigterm``)
and calls the handler installed before it (this one) as well, so both see the signal.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived. Not an ``Exception``: ``except Exception`` clauses (Hydra's
    job runner, loaders that refuse bad files) let it through, as they do ``KeyboardInterrupt``.

    Attributes:
        signum: the signal.
        clean: raised at a consistent point (:func:`check`), not in the middle of a step.
        hint: how to resume, set by the entry point that knows the command.
    """

    def __init__(self, signum: int, clean: bool = True) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.clean = int(signum), clean
        self.hint = ""

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """``128 + signum``, as a shell reports a process ended by that signal."""
        return 128 + self.signum


_state = {"received": 0, "deferred": 0}


def _handler(signum: int, frame: FrameType | None) -> None:
    first = not _state["received"]
    if first:
        _state["received"] = signum
    if _state["deferred"] and first:
        return  # the loop stops at its next check()
    raise Interrupted(signum, clean=False)


@contextmanager
def handled() -> Iterator[None]:
    """Within: SIGTERM and SIGINT are handled as this module describes; the handlers before are
    restored on exit (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["received"] = 0
    before = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        # the signal belonged to this command: later work in the process (a library caller, the
        # next test) must not stop at its first check()
        _state["received"] = 0


def received() -> int:
    """The first signal received since :func:`handled` began, else 0."""
    return _state["received"]


def check() -> None:
    """Raise :class:`Interrupted` if a signal has arrived (the loops' consistent points)."""
    if _state["received"]:
        raise Interrupted(_state["received"])


@contextmanager
def deferred() -> Iterator[None]:
    """Within: a first signal only sets the flag that :func:`check` raises on."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1
