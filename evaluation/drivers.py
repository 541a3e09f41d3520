"""What acts in an episode: a policy (receding horizon over predicted chunks) or sim's scripted expert.

A driver has reset(env, seed) at the episode start, act(observation) every step and needs_images() before each
step (whether the env must render the next observation), plus uses_images, n_action_steps and queries.
"""

from collections import deque

import numpy as np
import torch

from evaluation.policy_io import PolicyInputs, observation_batch
from insertion_vla.errors import UserError
from insertion_vla.policy import predict_action_chunk, prepare_batch
from sim.expert import ScriptedExpert


class PolicyDriver:
    """Receding horizon: predict a chunk from the observation, execute its first `n_action_steps` actions."""

    uses_images = True

    def __init__(self, policy, preprocessor, postprocessor, inputs: PolicyInputs, n_action_steps: int | None = None):
        self.policy, self.preprocessor, self.postprocessor, self.inputs = policy, preprocessor, postprocessor, inputs
        chunk = policy.config.chunk_size
        self.n_action_steps = n_action_steps or policy.config.n_action_steps
        if not 1 <= self.n_action_steps <= chunk:
            raise UserError(f"--n_action_steps must be in [1, {chunk}] (the policy's chunk_size), got {self.n_action_steps}")
        self.device = next(policy.parameters()).device
        self.queue: deque = deque()
        self.queries = 0
        self._noise = torch.Generator()

    def reset(self, env, seed: int) -> None:
        self.policy.reset()
        self.queue.clear()
        self.queries = 0
        self._noise.manual_seed(seed)  # the sampler's noise is a function of the episode: reruns are identical

    def needs_images(self) -> bool:
        """True when the next observation will be fed to the policy (the chunk is used up)."""
        return not self.queue

    def act(self, observation: dict) -> np.ndarray:
        if not self.queue:
            batch = prepare_batch(observation_batch(observation, self.inputs), self.preprocessor, self.device)
            config = self.policy.config
            noise = torch.randn(1, config.chunk_size, config.max_action_dim, generator=self._noise).to(self.device)
            chunk = predict_action_chunk(self.policy, batch, self.postprocessor, noise=noise)[0].float().numpy()
            if not np.all(np.isfinite(chunk)):
                raise UserError(f"the policy predicted non-finite actions (query {self.queries}): the weights are broken")
            self.queue.extend(chunk[: self.n_action_steps])
            self.queries += 1
        return self.queue.popleft()


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
