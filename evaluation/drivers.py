"""What acts in an episode: a policy (receding horizon over predicted chunks, or their temporal ensemble) or sim's
scripted expert.

A driver has reset(env, seed) at the episode start, act(observation) every step and needs_images() before each
step (whether the env must render the next observation), plus uses_images, n_action_steps and queries. A robot's
control loop calls PolicyDriver's parts itself: observe(observation) every tick, predict_chunk when a chunk is due.
ActionChunkSchedule, which turns predicted chunks into one action per step, knows nothing of the simulator: a
robot's driver can use it as it is.
"""

from collections import deque

import numpy as np
import torch

from evaluation.policy_io import PolicyInputs, observation_batch, placement_estimate
from insertion_vla.errors import UserError
from insertion_vla.policy import predict_action_chunk, prepare_batch
from sim.expert import ScriptedExpert


def check_n_action_steps(n_action_steps: int, chunk_size: int) -> None:
    """Refuse a number of actions per prediction that no chunk of chunk_size has (the --n_action_steps flags)."""
    if not 1 <= n_action_steps <= chunk_size:
        raise UserError(f"--n_action_steps must be in [1, {chunk_size}] (the policy's chunk_size), got {n_action_steps}")


class ActionChunkSchedule:
    """One action per step from action chunks (chunk_size steps each) predicted every `every` steps.

    Receding horizon (ensemble_coeff None): the first `every` actions of each chunk, then the next chunk.
    Temporal ensembling (ACT's, ensemble_coeff m): each step's action is the weighted average of the actions that
    every chunk predicted so far gives for that step, weight exp(-m * i) for the i-th oldest of them (i = 0 the
    oldest); m > 0 favours the older predictions (ACT uses 0.01), m = 0 weighs them equally, m < 0 favours the
    newer ones.

    Use: add(chunk) whenever needs_chunk(), then next_action() once per step; reset() at an episode's start.
    """

    def __init__(self, chunk_size: int, every: int, ensemble_coeff: float | None = None):
        check_n_action_steps(every, chunk_size)
        if ensemble_coeff is not None and not (np.isfinite(ensemble_coeff) and ensemble_coeff >= 0):
            raise UserError(f"--temporal_ensemble_coeff must be a finite number >= 0 (ACT: 0.01), got {ensemble_coeff}")
        self.chunk_size, self.every, self.ensemble_coeff = chunk_size, every, ensemble_coeff
        self._chunks: deque = deque()  # (step it was predicted at, chunk), oldest first
        self._step = 0  # the step the next action is for

    def reset(self) -> None:
        self._chunks.clear()
        self._step = 0

    def needs_chunk(self) -> bool:
        """True when a chunk must be added before the next action (none yet, or `every` steps since the last)."""
        return not self._chunks or self._step - self._chunks[-1][0] >= self.every

    def add(self, chunk: np.ndarray, predicted_at: int | None = None) -> None:
        """A chunk (chunk_size, action_dim) predicted from the observation before this step, or, when it arrives
        late (asynchronous inference), from the one before step `predicted_at`: element i is then the action for
        step predicted_at + i, so this step gets element (this step - predicted_at)."""
        if chunk.ndim != 2 or len(chunk) != self.chunk_size:
            raise ValueError(f"an action chunk must be ({self.chunk_size}, action_dim), got {chunk.shape}")
        start = self._step if predicted_at is None else predicted_at
        if start > self._step:
            raise ValueError(f"a chunk predicted at step {start} cannot be added at step {self._step}, before it")
        if self._chunks and start < self._chunks[-1][0]:
            raise ValueError(f"a chunk predicted at step {start} is older than the newest, of step {self._chunks[-1][0]}")
        self._chunks.append((start, chunk))

    def next_action(self) -> np.ndarray:
        if self.needs_chunk():
            raise RuntimeError(f"no chunk covers step {self._step}: add one first (needs_chunk() is True)")
        while self._chunks[0][0] + self.chunk_size <= self._step:  # its predictions all lie in the past
            self._chunks.popleft()
        newest_step, newest = self._chunks[-1]
        if self.ensemble_coeff is None:
            action = newest[self._step - newest_step]
        else:
            covering = [chunk[self._step - start] for start, chunk in self._chunks]
            exponents = -self.ensemble_coeff * np.arange(len(covering))
            weights = np.exp(exponents - exponents.max())  # scaled so that none overflows; the ratios are the same
            action = (weights @ np.stack(covering) / weights.sum()).astype(newest.dtype)
        self._step += 1
        return action


class PolicyDriver:
    """Predict a chunk from the observation every `n_action_steps` steps; execute the first n_action_steps of each
    (receding horizon) or, with `temporal_ensemble_coeff`, the temporal ensemble of all chunks (ActionChunkSchedule).
    n_action_steps defaults to the policy's own, ensembling or not (ACT predicts every step; on the fixed tier every
    10 steps did as well at a tenth of the queries, benchmarks/README.md). noise_scale multiplies the noise the flow
    starts from (a sampling temperature): 1 samples the actions as the policy was trained to; 0 integrates the flow
    from zero noise, one chunk per observation."""

    uses_images = True

    def __init__(self, policy, preprocessor, postprocessor, inputs: PolicyInputs, n_action_steps: int | None = None,
                 temporal_ensemble_coeff: float | None = None, noise_scale: float = 1.0):
        if not (np.isfinite(noise_scale) and noise_scale >= 0):
            raise UserError(f"--noise_scale must be a finite number >= 0 (1: the policy's own sampling), got {noise_scale}")
        self.policy, self.preprocessor, self.postprocessor, self.inputs = policy, preprocessor, postprocessor, inputs
        self.noise_scale = noise_scale
        self.n_action_steps = n_action_steps or policy.config.n_action_steps
        self.temporal_ensemble_coeff = temporal_ensemble_coeff
        self.schedule = ActionChunkSchedule(policy.config.chunk_size, self.n_action_steps, temporal_ensemble_coeff)
        self.device = next(policy.parameters()).device
        self.queries = 0
        self._noise = torch.Generator()
        # the episode's placement estimate (inputs.estimator), fed every frame by observe()
        self.tracker = inputs.estimator.tracker() if inputs.estimator is not None else None
        self._refines = inputs.estimator is not None and inputs.estimator.near is not None

    def reset(self, env, seed: int) -> None:
        self.policy.reset()
        self.schedule.reset()
        self.queries = 0
        self._noise.manual_seed(seed)  # the sampler's noise is a function of the episode: reruns are identical
        estimator = self.inputs.estimator  # with dataset.true_placement its tracker reads the env's placement
        self.tracker = estimator.tracker(env.scene_params if env is not None else None) if estimator is not None else None

    def needs_images(self) -> bool:
        """True when the next observation will be fed to the policy (a chunk is due), or to the placement estimate
        refined near the trocar (every frame)."""
        return self.schedule.needs_chunk() or self._refines

    def observe(self, observation: dict) -> None:
        """Every frame, before a chunk is predicted from it: the placement estimate sees it, as the training data's
        estimate saw every recorded frame (PlacementEstimator.episode_estimates). The first after reset() is the
        episode's first observation: the estimate starts from it."""
        if self.tracker is not None:
            placement_estimate(observation, self.inputs, self.tracker)

    def predict_chunk(self, observation: dict) -> np.ndarray:
        """The chunk (chunk_size, action_dim) the policy predicts from one observation, in joint units, with the
        placement estimate that observe() made up to it."""
        estimate = None
        if self.tracker is not None:
            if self.tracker.current is None:
                raise RuntimeError("PolicyDriver.predict_chunk before observe(): the placement estimate starts from "
                                   "the episode's first observation")
            estimate = self.tracker.current.copy()
        batch = prepare_batch(observation_batch(observation, self.inputs, estimate), self.preprocessor, self.device)
        config = self.policy.config
        noise = self.noise_scale * torch.randn(1, config.chunk_size, config.max_action_dim, generator=self._noise)
        noise = noise.to(self.device)
        return predict_action_chunk(self.policy, batch, self.postprocessor, noise=noise)[0].float().numpy()

    def act(self, observation: dict) -> np.ndarray:
        self.observe(observation)
        if self.schedule.needs_chunk():
            chunk = self.predict_chunk(observation)
            if not np.all(np.isfinite(chunk)):
                raise UserError(f"the policy predicted non-finite actions (query {self.queries}): the weights are broken")
            self.schedule.add(chunk)
            self.queries += 1
        return self.schedule.next_action()


class ExpertDriver:
    """sim's scripted expert (privileged state, no images) behind the same interface."""

    uses_images = False
    n_action_steps = 1
    queries = 0

    def __init__(self):
        self.expert = ScriptedExpert()

    def reset(self, env, seed: int) -> None:
        self.expert.reset(env)

    def needs_images(self) -> bool:
        return False

    def act(self, observation: dict) -> np.ndarray:
        return self.expert.act(observation)
