"""A live progress bar (rich) showing the scenario's phase and current rates."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import TracebackType

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text


class _TwoLines(Progress):
    """The bar on one line (title, bar, percentage, elapsed time) and the current rates on the
    next, cut with an ellipsis at the terminal's width: on one line the rates text took the
    width and left the bar one character wide at 80 columns."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            rates = task.fields.get("rates")
            if rates:
                yield Text(f"  {rates}", no_wrap=True, overflow="ellipsis")


def progress_bar(console: Console) -> Progress:
    """The progress display Live shows (apart, so it can be rendered at a given width)."""
    return _TwoLines(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        expand=True,
    )


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
            self._progress = progress_bar(Console(stderr=True))
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
