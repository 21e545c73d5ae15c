"""Fakes shared by engine-level tests."""

from __future__ import annotations

import threading


class SabotagedRunner:
    """Wraps a model runner: after ``good_steps`` steps it hangs (until released) or raises."""

    def __init__(self, runner, mode: str, good_steps: int = 2) -> None:  # type: ignore[no-untyped-def]
        self.runner, self.mode, self.good_steps = runner, mode, good_steps
        self.release = threading.Event()

    def run(self, out):  # type: ignore[no-untyped-def]
        if self.good_steps > 0:
            self.good_steps -= 1
            return self.runner.run(out)
        if self.mode == "hang":
            self.release.wait(60)
        raise RuntimeError("injected model runner failure")
