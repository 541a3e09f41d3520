"""Asynchronous inference (SmolVLA's idea): the next chunk is predicted in a background thread while the arm executes
the current one. A chunk predicted from the observation of tick t that arrives at tick t + d replaces the queue
from its element d (evaluation.drivers.ActionChunkSchedule.add(chunk, predicted_at=t)), so the arm never waits for
the model as long as a prediction takes less than the chunk's remaining ticks."""

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Prediction:
    tick: int  # the tick whose observation it was predicted from
    chunk: np.ndarray | None  # (chunk_size, action_dim); None when the prediction raised
    latency_s: float
    error: BaseException | None = None


class BackgroundPredictor:
    """One prediction at a time in a daemon thread: submit(observation, tick) when idle, poll() every tick."""

    def __init__(self, predict: Callable[[dict], np.ndarray]):
        self._predict = predict
        self._requests: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self.busy = False
        self._thread = threading.Thread(target=self._serve, name="async-inference", daemon=True)
        self._thread.start()

    def submit(self, observation: dict, tick: int) -> None:
        if self.busy:
            raise RuntimeError("a prediction is already running: poll() until it arrives")
        self.busy = True
        self._requests.put((observation, tick))

    def poll(self, timeout: float = 0.0) -> Prediction | None:
        """The finished prediction, if one arrived since the last poll (waiting up to `timeout` s for it)."""
        try:
            prediction = self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait()
        except queue.Empty:
            return None
        self.busy = False
        return prediction

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop serving: a prediction in flight is finished and dropped (waited for up to timeout_s, so that the
        model is not still in use once the loop has returned)."""
        self._requests.put(None)
        self._thread.join(timeout_s)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            observation, tick = request
            started = time.monotonic()
            try:
                chunk, error = self._predict(observation), None
            except Exception as err:  # handed to the control loop, which stops the robot and reports it
                chunk, error = None, err
            self._results.put(Prediction(tick, chunk, time.monotonic() - started, error))
