"""Progress display: a rich progress bar on a terminal, one plain line per step otherwise."""

from __future__ import annotations

from collections.abc import Callable


class StepProgress:
    def __init__(self, total: int, start: int, enabled: bool, log: Callable[[str], None] = print):
        self.total, self.start, self.enabled, self._log = total, start, enabled, log
        self._progress = None
        self._task = None

    def __enter__(self) -> StepProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.total, completed=self.start)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    @staticmethod
    def describe(m: dict[str, float]) -> str:
        parts = []
        if "reward/mean" in m:
            parts.append(f"reward {m['reward/mean']:.3f}")
        if "loss/total" in m:
            parts.append(f"loss {m['loss/total']:.4f}")
        if "coef/mu" in m:  # CHORD-style mixing weight, when the method has one
            parts.append(f"mu {m['coef/mu']:.2f}")
        if "perf/tokens_per_s" in m:
            parts.append(f"{m['perf/tokens_per_s']:.0f} tok/s")
        if "perf/step_s" in m:
            parts.append(f"{m['perf/step_s']:.1f} s/step")
        return " | ".join(parts)

    def update(self, step: int, m: dict[str, float]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, description=self.describe(m))
        else:
            self._log(f"step {step}/{self.total} | {self.describe(m)}")

    def log(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            self._log(text)
