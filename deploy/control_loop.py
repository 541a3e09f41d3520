"""The control loop, the same for every robot: observe, take the next action of the chunk queue, check it, send it,
record it, then sleep to the next tick of the wall clock.

Before the clock starts, chunk 0 is predicted from the first observation (the arm is still; this also warms the
model up). Then tick t executes one action: the action for step t of the newest chunks
(evaluation.drivers.ActionChunkSchedule: receding horizon, or temporal ensembling), so ticks, executed actions
and recorded frames are counted alike.
  synchronous    a chunk every n_action_steps ticks, predicted in the tick that needs it: a prediction longer
                 than a period makes that tick overrun (the arm holds its target meanwhile);
  asynchronous   a prediction starts n_action_steps ticks after the newest chunk's observation, in a background
                 thread (deploy.async_inference); when it arrives d ticks later, its element d is the current
                 tick's. Only if the queue runs dry first (a prediction longer than chunk_size - n_action_steps
                 ticks) does a tick wait for the model, counted as `starved`; a wait longer than a whole
                 chunk's ticks stops the run (safety:model_stalled).
A tick that ends after its deadline is an overrun; the next one starts at once and the clock is re-anchored
there (no burst of catching-up commands).

The run stops when max_seconds of wall clock have passed since tick 0, on an operator's stop (Ctrl-C, SIGTERM), a
failed safety check (deploy.safety), a robot fault, or an error; whatever the cause, the robot is stopped (motion paused and cleared) before run()
returns, and the stop says why.
"""

import itertools
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from deploy.async_inference import BackgroundPredictor
from deploy.robot import Robot, RobotFault
from deploy.safety import SafetyLimits, SafetyStop, check_command, check_observation, check_start
from deploy.stop_request import StopRequest
from evaluation.drivers import ActionChunkSchedule, check_n_action_steps

MAX_LOGGED_VIOLATIONS = 50  # violation events kept in the report (all are counted)


@dataclass(frozen=True)
class LoopSettings:
    hz: float
    n_action_steps: int
    async_inference: bool = False
    max_seconds: float = 20.0
    dry_run: bool = False
    temporal_ensemble_coeff: float | None = None


@dataclass
class LoopStats:
    tick_starts: list = field(default_factory=list)  # time.monotonic() of each tick's start
    overruns: int = 0
    first_chunk_s: float = 0.0  # chunk 0, before the clock started
    latencies_s: list = field(default_factory=list)  # every later chunk: observation handed over -> chunk ready
    chunk_ticks: list = field(default_factory=list)  # (tick predicted from, tick it arrived) of every chunk
    steps: int = 0  # actions executed (sent; logged only in a dry run)
    starved: int = 0  # asynchronous: ticks that waited for the model
    violations: Counter = field(default_factory=Counter)
    violation_events: list = field(default_factory=list)
    stop: dict = field(default_factory=dict)  # kind, reason, tick


class _OperatorStop(Exception):
    pass


class ControlLoop:
    """predict: observation -> chunk (chunk_size, 6) rad; observe: called with every observation, before any
    prediction from it (the policy's placement estimate, PolicyDriver.observe); sinks: objects with
    add(observation, command, time_s) called for every executed tick (the recording, the dry-run log)."""

    def __init__(self, robot: Robot, predict: Callable[[dict], np.ndarray], chunk_size: int, settings: LoopSettings,
                 limits: SafetyLimits, stop_request: StopRequest, sinks: tuple = (),
                 observe: Callable[[dict], None] = lambda observation: None):
        check_n_action_steps(settings.n_action_steps, chunk_size)
        self.robot, self.predict, self.observe, self.chunk_size = robot, predict, observe, chunk_size
        self.settings, self.limits, self.stop_request, self.sinks = settings, limits, stop_request, sinks
        self.period = 1.0 / settings.hz
        # asynchronous: a chunk is used until the next arrives, so only an exhausted one needs another at once
        every = chunk_size if settings.async_inference else settings.n_action_steps
        self.schedule = ActionChunkSchedule(chunk_size, every, settings.temporal_ensemble_coeff)
        self.stats = LoopStats()
        self._background: BackgroundPredictor | None = None
        self._newest_chunk_tick = 0

    def run(self) -> LoopStats:
        tick = 0
        try:
            observation = self.robot.observe()
            check_observation(observation, time.monotonic(), self.period, self.robot.cameras)
            check_start(observation, self.limits)
            self.observe(observation)
            started = time.monotonic()
            self.schedule.add(self.predict(observation))
            self.stats.first_chunk_s = time.monotonic() - started
            self.stats.chunk_ticks.append((0, 0))
            if self.settings.async_inference:
                self._background = BackgroundPredictor(self.predict)
            previous = start_time = None
            clock_start = deadline = time.monotonic()
            for tick in itertools.count():
                self.stats.tick_starts.append(time.monotonic())
                if self.stop_request.is_set():
                    raise _OperatorStop(self.stop_request.reason)
                if self.stats.tick_starts[-1] - clock_start >= self.settings.max_seconds - 1e-3:  # timer slack
                    self._stopped("max_seconds", f"{self.settings.max_seconds:g} s elapsed ({tick} ticks)", tick)
                    break
                if tick == 0:
                    print(f"Clock started (chunk 0 took {self.stats.first_chunk_s:.2f} s): Ctrl-C or SIGTERM stops "
                          "the arm", flush=True)
                observation = self.robot.observe()
                check_observation(observation, time.monotonic(), self.period, self.robot.cameras)
                self.observe(observation)
                if previous is None:  # the first command's step counts from the joints measured at tick 0
                    previous, start_time = np.asarray(observation["qpos"], dtype=np.float64), observation["time"]
                self._update_chunks(observation, tick)
                command, violations = check_command(self.schedule.next_action(), previous, self.limits)
                self._count(violations, tick)
                if not self.settings.dry_run:
                    self.robot.send_joints(command)
                for sink in self.sinks:
                    sink.add(observation, command, observation["time"] - start_time)
                previous = command
                self.stats.steps += 1
                deadline += self.period
                now = time.monotonic()
                if now > deadline:
                    self.stats.overruns += 1
                    deadline = now
                else:
                    self.stop_request.wait(deadline - now)  # a stop wakes it; handled at the next tick's top
        except _OperatorStop as stop:
            self._stopped("operator", str(stop), tick)
        except SafetyStop as stop:
            self._stopped(f"safety:{stop.kind}", stop.detail, tick)
        except RobotFault as fault:
            self._stopped("robot_fault", str(fault), tick)
        except Exception as err:  # a bug or a broken model: told, and the arm stopped as on any other stop
            traceback.print_exc()
            self._stopped("error", f"{type(err).__name__}: {err}", tick)
        finally:
            self.robot.stop(self.stats.stop.get("reason", "the run ended"))
            if self._background is not None:
                self._background.close()
        return self.stats

    def _update_chunks(self, observation: dict, tick: int) -> None:
        """Make sure a chunk covers this tick: predict it now (synchronous), or take what the background thread
        delivered and start the next prediction when due (asynchronous)."""
        if not self.settings.async_inference:
            if self.schedule.needs_chunk():
                started = time.monotonic()
                self.schedule.add(self.predict(observation))
                self._took(time.monotonic() - started, tick, tick)
            return
        background = self._background
        self._add_arrived(background.poll(), tick)
        if not background.busy and tick - self._newest_chunk_tick >= self.settings.n_action_steps:
            background.submit(observation, tick)
        if self.schedule.needs_chunk():  # the queue ran dry: the in-flight prediction covers this tick, wait for it
            self.stats.starved += 1
            arrived, waited_since = None, time.monotonic()
            while arrived is None:
                if self.stop_request.is_set():
                    raise _OperatorStop(self.stop_request.reason)
                waited = time.monotonic() - waited_since
                if waited > self.chunk_size * self.period:  # a model that hangs must not leave the run waiting
                    raise SafetyStop("model_stalled", f"tick {tick} waited {waited:.2f} s for the in-flight prediction, "
                                                      f"longer than a whole chunk takes ({self.chunk_size} ticks)")
                arrived = background.poll(timeout=self.period)
            self._add_arrived(arrived, tick)

    def _add_arrived(self, arrived, tick: int) -> None:
        if arrived is None:
            return
        if arrived.error is not None:
            raise arrived.error
        self.schedule.add(arrived.chunk, predicted_at=arrived.tick)
        self._newest_chunk_tick = arrived.tick
        self._took(arrived.latency_s, arrived.tick, tick)

    def _took(self, latency_s: float, predicted_at: int, arrived_at: int) -> None:
        self.stats.latencies_s.append(latency_s)
        self.stats.chunk_ticks.append((predicted_at, arrived_at))

    def _count(self, violations: list, tick: int) -> None:
        for violation in violations:
            self.stats.violations[violation.kind] += 1
            if len(self.stats.violation_events) < MAX_LOGGED_VIOLATIONS:
                self.stats.violation_events.append({"tick": tick, "kind": violation.kind, "detail": violation.detail,
                                                    "response": violation.response})

    def _stopped(self, kind: str, reason: str, tick: int) -> None:
        self.stats.stop = {"kind": kind, "reason": reason, "tick": tick}
