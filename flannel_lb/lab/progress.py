"""Progress for work a person waits on (`lab up`, `lab scale`, the benchmarks' bulk etcd writes).

Quiet for work that ends within `delay` seconds. After that, on a terminal, one line that updates in
place (carriage return); anywhere else (logs, CI), a plain line every `interval` seconds, so a log
shows the work is alive without a line per item. Both end with one line saying how much was done.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO

_TTY_REFRESH = 0.1  # seconds between redraws of the updating line


class Progress:
    """A counter: `advance(n)` as work gets done, `close()` (or `with`) when it ends."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: IO[str] | None = None,
        delay: float = 2.0,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = _isatty(self._stream)
        self._delay, self._interval = delay, interval
        self._clock = clock
        self._start = clock()
        self._shown = False  # anything written yet (short work writes nothing at all)
        self._last = self._start  # when the last line (or redraw) was written
        self._closed = False

    def advance(self, n: int = 1) -> None:
        self.count += n
        now = self._clock()
        if now - self._start < self._delay:
            return
        if self._tty:
            if not self._shown or now - self._last >= _TTY_REFRESH:
                self._write("\r" + self._text(now) + "\x1b[K")
        elif not self._shown or now - self._last >= self._interval:
            self._write(self._text(now) + "\n")

    def close(self) -> None:
        """The final line, only if progress was shown (quick work stays silent)."""
        if self._closed:
            return
        self._closed = True
        if not self._shown:
            return
        now = self._clock()
        text = f"{self.label}: {self._counted()} in {now - self._start:.1f} s"
        self._write(("\r" + text + "\x1b[K" if self._tty else text) + "\n")

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _counted(self) -> str:
        return f"{self.count}/{self.total}" if self.total is not None else str(self.count)

    def _text(self, now: float) -> str:
        pct = f" ({100 * self.count // self.total}%)" if self.total else ""
        return f"{self.label}: {self._counted()}{pct}, {now - self._start:.0f} s"

    def _write(self, text: str) -> None:
        self._shown, self._last = True, self._clock()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must never stop the work itself
            pass


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
