"""The machine's boot before the agent: its timed steps, put at the head of the agent's log.

The boot script (:mod:`tpi_core.boot.script`) writes ``/var/log/tpi/boot.log``, one line
``EPOCH TEXT`` each, a step starting with ``step NAME``. The agent copies those lines into its
boot log with their own times, and at the script's start adds one line with the time from
the start of the user-data to the start of the script and each step's share of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class MachineLog:
    """The lines of a machine's boot log: ``(time, text)`` each."""

    lines: tuple[tuple[float, str], ...]

    @classmethod
    def read(cls, path: Path | None) -> MachineLog:
        """The log at ``path``; empty when there is none (a local run, a missing file)."""
        if path is None:
            return cls(())
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return cls(())
        lines = []
        for line in text.splitlines():
            stamp, _, rest = line.partition(" ")
            try:
                lines.append((float(stamp), rest))
            except ValueError:
                continue
        return cls(tuple(lines))

    def steps(self) -> list[tuple[str, float]]:
        """``(step, start time)`` in order."""
        return [(text[5:].strip(), when) for when, text in self.lines
                if text.startswith("step ")]

    def summary(self, script_start: float) -> str | None:
        """``boot: 41.2 s from user-data to script: python 0.1 s (0%), ...``, the last
        share being the agent's own (start, restore); None without a boot log."""
        if not self.lines:
            return None
        begin = self.lines[0][0]
        total = max(script_start - begin, 0.0)
        marks = self.steps() + [("script", script_start)]
        parts = [(name, start, marks[i + 1][1]) for i, (name, start) in enumerate(marks[:-1])]
        shares = ", ".join(
            f"{name} {end - start:.1f} s ({(end - start) / total if total else 0:.0%})"
            for name, start, end in parts)
        return f"{total:.1f} s from user-data to script: {shares}"
