"""Episode seeds: episode i of a collection is reproducible from (base seed, i).

    episode_seed(base_seed, episode_index, attempt) = (base_seed * 1_000_000 + episode_index) * 1_000 + attempt

The map is one-to-one for episode_index < 1e6 and attempt < 1000, so two collections (or a collection and an
evaluation) with different base seeds never share a simulation seed. The collector retries a failed episode
with attempt + 1; the evaluator uses attempt 0 and a base seed different from the training data's.
"""

MAX_EPISODES = 1_000_000
MAX_ATTEMPTS = 1_000


def episode_seed(base_seed: int, episode_index: int, attempt: int = 0) -> int:
    if base_seed < 0:
        raise ValueError(f"base seed must be >= 0, got {base_seed}")
    if not 0 <= episode_index < MAX_EPISODES:
        raise ValueError(f"episode index must be in [0, {MAX_EPISODES}), got {episode_index}")
    if not 0 <= attempt < MAX_ATTEMPTS:
        raise ValueError(f"attempt must be in [0, {MAX_ATTEMPTS}), got {attempt}")
    return (base_seed * MAX_EPISODES + episode_index) * MAX_ATTEMPTS + attempt
