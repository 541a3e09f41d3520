"""An operator's stop: Ctrl-C (SIGINT) or SIGTERM sets a flag that the control loop reads every tick, so that the
robot is stopped and the recording closed by the loop itself, never from inside a signal handler."""

import signal
import threading


class StopRequest:
    def __init__(self):
        self._event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` s; True at once when a stop was requested (a signal wakes it)."""
        return self._event.wait(max(timeout, 0.0))


class StopOnSignals:
    """Within `with`: SIGINT and SIGTERM set the StopRequest (Ctrl-C no longer raises KeyboardInterrupt)."""

    NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}

    def __init__(self, request: StopRequest):
        self.request = request
        self._previous = {}

    def __enter__(self):
        for signum, name in self.NAMES.items():
            self._previous[signum] = signal.signal(signum, lambda *_, name=name: self.request.set(name))
        return self.request

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
