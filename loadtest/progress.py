"""A live progress bar (rich) showing the scenario's phase and current rates."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class Live:
    """`with Live("throughput", total=60) as live: live.update(done, "udp step 3: 120k msg/s")`.

    Disabled (silent) when `enabled` is False or stderr is not a terminal, so tests and CI logs
    stay clean; `log` still prints one line per call when enabled is None and not a terminal.
    """

    def __init__(self, title: str, total: float, enabled: bool | None = None) -> None:
        self.title = title
        tty = sys.stderr.isatty()
        self.enabled = tty if enabled is None else enabled and tty
        self.plain = enabled is None and not tty
        self._progress: Progress | None = None
        self._task = None
        self.total = total

    def __enter__(self) -> Live:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[rates]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.total, rates="")
        return self

    def update(
        self, done: float | None = None, rates: str | None = None, advance: float | None = None
    ) -> None:
        if self._progress is None or self._task is None:
            return
        kwargs: dict[str, object] = {}
        if done is not None:
            kwargs["completed"] = done
        if advance is not None:
            kwargs["advance"] = advance
        if rates is not None:
            kwargs["rates"] = rates
        self._progress.update(self._task, **kwargs)  # type: ignore[arg-type]

    def log(self, text: str) -> None:
        """A line worth keeping in the scroll-back (a step's result)."""
        if self._progress is not None:
            self._progress.console.print(text)
        elif self.plain:
            print(text, file=sys.stderr, flush=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
