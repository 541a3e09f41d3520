"""The training configuration: its schema with defaults, YAML loading, `--section.key=value` overrides.

A config is a plain nested dict. Every key that may appear is declared in SCHEMA with its default and the
types it accepts, so a typo is an error that names the closest valid key instead of a silently ignored
setting. Defaults are the values of the real 5-GPU simulation run (train_config_smolvla_sim.yaml).
"""

import argparse
import copy
import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

from episode_format.atomic import atomic_write_text
from insertion_vla.errors import UserError


class ConfigError(UserError):
    pass


@dataclass(frozen=True)
class Field:
    default: object
    types: tuple  # accepted Python types; NoneType where null is allowed
    help: str = ""
    # the valid values beyond the type (null, where allowed, is always valid)
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    choices: tuple | None = None

    def rule(self) -> str:
        """The valid range as the reference and the errors write it, e.g. '> 0' or 'one of cpu, cuda'."""
        parts = [f"{op} {bound}" for op, bound in ((">=", self.at_least), (">", self.above), ("<=", self.at_most))
                 if bound is not None]
        if self.choices:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        return " and ".join(parts)

    def accepts(self, value) -> bool:
        if value is None:
            return True
        return ((self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most) and (not self.choices or value in self.choices))


NoneType = type(None)
NUMBER = (int, float)


def _field(default, *types, help="", **valid):
    return Field(default, types or (type(default),), help, **valid)


SCHEMA = {
    "seed": _field(1000, at_least=0, help="seed of every random choice (data order, noise, validation split)"),
    "output_dir": _field("outputs/train/smolvla_needle_insertion_sim", help="checkpoints, logs, plots"),
    "normalization": {
        "enable": _field(True, help="normalize state/action with the stats file (false: explicit opt-out)"),
        "stats_file": _field("dataset_stats_sim.yaml", help="made by compute_dataset_stats.py"),
        "mode": _field("MEAN_STD", choices=("MEAN_STD", "MIN_MAX", "IDENTITY"), help="lerobot NormalizationMode: MEAN_STD, MIN_MAX or IDENTITY"),
    },
    "dataset": {
        "root_dir": _field("data/Eye_trocar_sim", help="searched recursively for *.h5 / *.hdf5"),
        "horizon": _field(50, at_least=1, help="actions per sample (the action chunk)"),
        "use_ee_pose": _field(True, help="state includes observations/ee_pose (when state_key is null)"),
        "use_qpos": _field(False, help="state includes observations/qpos (when state_key is null)"),
        "state_key": _field(None, str, NoneType, help="HDF5 path of the state; overrides use_ee_pose/use_qpos"),
        "action_key": _field("action", help="HDF5 path of the action"),
        "placement_estimate": _field(None, str, NoneType,
                                     help="a VLM folder pretrained by insertion_vla.vision_pretrain: its localizer's "
                                          "estimate of the phantom's placement (dx, dy mm, yaw deg) from each "
                                          "episode's first frame is appended to the state (simulator episodes); "
                                          "null: none"),
        "near_target_estimate": _field(False, help="with placement_estimate: refine the estimate near the trocar "
                                                   "from the tool camera with the folder's near-target localizer "
                                                   "(vision_pretrain --near_poses), frame by frame"),
        "true_placement": _field(False, help="append the simulator's true placement (each episode's recorded "
                                             "phantom_dx/dy/yaw; the env's in closed loop) where the estimate "
                                             "goes: a perfect localizer, to measure the policy's own error. "
                                             "Simulation only: no robot can be given it"),
        "task_instruction": _field(
            "Insert needle into eye trocar in simulation", str, NoneType,
            help="language instruction; null: each episode's `task` attribute",
        ),
        "cameras": _field(
            {"side_camera": "camera1", "tool_camera": "camera2", "top_camera": "camera3"},
            help="HDF5 camera name -> lerobot name (observation.images.<name>)",
        ),
        "decode": _field("cpu", choices=("cpu", "cuda"),
                         help="where camera JPEGs are decoded and resized: cpu (OpenCV in the DataLoader workers) or "
                              "cuda (torchvision, batched, on the training device; JPEG frames only)"),
        "augment": _field(False, help="photometric augmentation of training images (real data)"),
        "augmentation": {
            "brightness": _field(0.2, *NUMBER, at_least=0, at_most=1, help="max relative brightness change"),
            "contrast": _field(0.2, *NUMBER, at_least=0, at_most=1, help="max relative contrast change"),
            "saturation": _field(0.2, *NUMBER, at_least=0, at_most=1, help="max relative saturation change"),
            "hue": _field(0.05, *NUMBER, at_least=0, at_most=0.5, help="max hue shift, fraction of the colour circle"),
            "noise_std": _field(3.0, *NUMBER, at_least=0, help="std of Gaussian pixel noise, 0-255 scale"),
        },
    },
    "policy": {
        "vlm_model_name": _field("HuggingFaceTB/SmolVLM2-500M-Video-Instruct", help="Hub id or local dir"),
        "pretrained_model_id": _field(None, str, NoneType, help="trained SmolVLA to start from (dir or Hub id)"),
        "load_vlm_weights": _field(False, help="load the VLM's pretrained weights (else random unless pretrained)"),
        "n_obs_steps": _field(1, at_least=1, help="observation frames per sample (SmolVLA uses 1)"),
        "chunk_size": _field(50, at_least=1, help="actions predicted at once; equals dataset.horizon"),
        "n_action_steps": _field(10, at_least=1, help="actions of a chunk executed before predicting again"),
        "max_state_dim": _field(32, at_least=1, help="state zero-padded to this size inside SmolVLA"),
        "max_action_dim": _field(32, at_least=1, help="action zero-padded to this size inside SmolVLA"),
        "num_steps": _field(10, at_least=1, help="flow-matching denoising steps at inference"),
        "resize_imgs_with_padding": _field([512, 512], list, help="image size the policy sees"),
        "tokenizer_max_length": _field(48, at_least=1, help="language tokens of the instruction"),
        "freeze_vision_encoder": _field(True, help="keep the VLM's vision encoder frozen"),
        "train_expert_only": _field(True, help="train the action expert only; the VLM stays frozen"),
        "train_state_proj": _field(True, help="train the state projection"),
        "num_vlm_layers": _field(16, at_least=1, help="VLM layers kept (the first N)"),
        "attention": _field("sdpa", choices=("sdpa", "eager"),
                            help="attention kernel: torch's scaled_dot_product_attention or lerobot's eager matmuls "
                                 "(the same model; not saved in the export)"),
    },
    "training": {
        "steps": _field(30000, at_least=1, help="steps of the current schedule"),
        "batch_size": _field(16, at_least=1, help="per GPU / process"),
        "gradient_accumulation_steps": _field(1, at_least=1, help="micro-batches per optimizer step"),
        "num_workers": _field(4, at_least=0, help="DataLoader workers per process"),
        "log_freq": _field(100, at_least=1, help="console / W&B line every N steps"),
        "save_freq": _field(2000, at_least=1, help="checkpoint every N steps"),
        "keep_last_checkpoints": _field(None, int, NoneType, at_least=1, help="keep the newest N step checkpoints; null: all"),
        "lambda_temporal": _field(0.1, *NUMBER, at_least=0, help="weight of the temporal-consistency loss"),
        "loss_spike_threshold": _field(10.0, *NUMBER, above=1, help="spike: loss > threshold x recent mean"),
        "loss_spike_window": _field(100, at_least=1, help="losses in the recent mean"),
        "max_nonfinite_steps": _field(10, at_least=1, help="stop after this many non-finite steps in a row"),
        "max_bad_samples": _field(10, at_least=0, help="stop once more than this many bad frames (a JPEG that does not "
                                  "decode, a NaN/Inf state or action row) were met, over all ranks; until then a sample "
                                  "needing one is replaced by another and the frame listed in bad_samples.csv"),
        "use_bfloat16": _field(True, help="bf16 autocast on CUDA"),
        "compile": _field(False, help="torch.compile the loss; the first step compiles (minutes), its time is printed"),
        "device": _field("auto", choices=("auto", "cuda", "cpu"), help="auto, cuda or cpu"),
    },
    "validation": {
        "enable": _field(True, help="hold out episodes and validate on them"),
        "num_episodes": _field(20, at_least=1, help="episodes held out by a seeded choice"),
        "val_freq": _field(2000, at_least=1, help="validate every N steps and at the end"),
        "max_samples": _field(None, int, NoneType, at_least=1, help="cap on validation frames; null: all"),
        "batch_size": _field(16, at_least=1, help="validation batch per process"),
        "plot_episodes": _field(3, at_least=0, help="held-out episodes drawn in the trajectory plot"),
    },
    "evaluation": {
        "enable": _field(False, help="closed-loop episodes in the simulator during training (rank 0)"),
        "freq": _field(2000, at_least=1, help="every N steps and at the end"),
        "episodes": _field(10, at_least=1, help="simulated episodes per evaluation"),
        "temporal_ensemble_coeff": _field(
            None, *NUMBER, NoneType, at_least=0,
            help="ensemble overlapping chunks with ACT's weights exp(-M i) (evaluate_smolvla_sim.py "
                 "--temporal_ensemble_coeff); null: receding horizon of policy.n_action_steps",
        ),
    },
    "optimizer": {
        "lr": _field(1e-4, *NUMBER, above=0, help="peak learning rate"),
        "betas": _field([0.9, 0.95], list, help="AdamW betas"),
        "eps": _field(1e-8, *NUMBER, above=0, help="AdamW epsilon"),
        "weight_decay": _field(1e-10, *NUMBER, at_least=0, help="AdamW weight decay"),
        "grad_clip_norm": _field(10.0, *NUMBER, above=0, help="clip the gradient norm to this"),
        "implementation": _field("auto", choices=("auto", "fused", "foreach", "for_loop"),
                                 help="AdamW kernels; auto: fused when on CUDA, else foreach (the same updates)"),
    },
    "scheduler": {
        "num_warmup_steps": _field(1000, at_least=0, help="linear warmup to optimizer.lr"),
        "num_decay_steps": _field(30000, at_least=1, help="cosine decay to decay_lr, counted from the schedule start"),
        "decay_lr": _field(2.5e-6, *NUMBER, at_least=0, help="LR at the end of the cosine decay"),
    },
    "wandb": {
        "enable": _field(True, help="also works with WANDB_MODE=offline"),
        "project": _field("smolvla-meca500-insertion-sim", help="W&B project"),
        "entity": _field(None, str, NoneType, help="W&B team or user; null: your default"),
        "name": _field(None, str, NoneType, help="run name; null: W&B picks one"),
        "tags": _field([], list, help="run tags"),
        "notes": _field(None, str, NoneType, help="run notes"),
    },
}


def defaults(schema=SCHEMA) -> dict:
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def _all_keys(schema=SCHEMA, prefix="") -> list[str]:
    keys = []
    for k, v in schema.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += _all_keys(v, prefix + k + ".")
    return keys


def _unknown_key_error(dotted: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(dotted, _all_keys(), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{dotted}' in {source}.{hint}")


def _type_name(types) -> str:
    return " or ".join("null" if t is NoneType else t.__name__ for t in types)


def _check_value(dotted: str, value, field: Field, source: str):
    # bool is an int in Python; a flag is never a number and a number never a flag
    ok = isinstance(value, field.types) and not (isinstance(value, bool) and bool not in field.types)
    if not ok:
        raise ConfigError(
            f"config key '{dotted}' in {source} must be {_type_name(field.types)}, got {value!r} "
            f"({type(value).__name__}). Default: {field.default!r}."
        )
    if isinstance(value, float) and int in field.types and float not in field.types:
        raise ConfigError(f"config key '{dotted}' in {source} must be a whole number, got {value!r}.")
    if not field.accepts(value):
        raise ConfigError(f"config key '{dotted}' in {source} must be {field.rule()}, got {value!r}. "
                          f"Default: {field.default!r}.")


def _yaml11_float(value, field: Field):
    """YAML 1.1 reads `1e-4` (no dot) as a string; for a numeric key it is the number the user meant."""
    if isinstance(value, str) and float in field.types:
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _merge(base: dict, update: dict, schema: dict, source: str, prefix=""):
    for key, value in update.items():
        dotted = prefix + str(key)
        if key not in schema:
            raise _unknown_key_error(dotted, source)
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' in {source} is a section: give keys under it, got {value!r}.")
            _merge(base[key], value, schema[key], source, dotted + ".")
        else:
            value = _yaml11_float(value, schema[key])
            _check_value(dotted, value, schema[key], source)
            base[key] = value  # a dict or list value replaces the old one whole


def parse_override(arg: str) -> tuple[str, object]:
    """'--section.key=value' -> ('section.key', value parsed as YAML)."""
    if not arg.startswith("--") or "=" not in arg:
        raise ConfigError(f"unrecognized argument '{arg}': neither a flag of this command (see --help) nor a config "
                          "override written as --section.key=value, e.g. --training.steps=100")
    dotted, text = arg[2:].split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse the value of override '{arg}' as YAML: {err}") from None
    return dotted, value


def _nest(dotted: str, value) -> dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def load_config(path, overrides: list[str] = ()) -> dict:
    """Defaults <- YAML file <- `--section.key=value` overrides, each validated against SCHEMA."""
    cfg = defaults()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}. Pass --config with an existing YAML file.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}.")
        _merge(cfg, data, SCHEMA, str(path))
    for arg in overrides:
        dotted, value = parse_override(arg)
        _merge(cfg, _nest(dotted, value), SCHEMA, f"override '{arg}'")
    validate(cfg)
    return cfg


OVERRIDES_HELP = """\
Any config key can be overridden as --section.key=value, the value read as YAML (`python -m insertion_vla.config`
lists every key):
    --training.batch_size=8  "--policy.resize_imgs_with_padding=[64, 64]"  --wandb.enable=false
    "--dataset.cameras={zed_left: camera1, oak_wrist: camera2, zed_top: camera3}"   (a dict replaces the old one)
"""


def parse_args_and_config(parser: argparse.ArgumentParser, argv=None, shortcuts: dict[str, str] | None = None):
    """The parser's own flags, then every other argument as a `--section.key=value` override of the config that
    `--config` names (the parser must define --config). shortcuts: {flag dest: config key} for flags that only set
    a key (e.g. --lr sets optimizer.lr). Returns (args, resolved config). One parser for every CLI that reads the
    training config, so the overrides an error message advises work in each of them."""
    parser.allow_abbrev = False  # `--dataset.root_dir=...` must never pass as an abbreviation of `--dataset_root`
    args, overrides = parser.parse_known_args(argv)
    for dest, dotted in (shortcuts or {}).items():
        if getattr(args, dest) is not None:
            overrides.append(f"--{dotted}={getattr(args, dest)}")
    return args, load_config(args.config, overrides)


def validate(cfg: dict):
    """Checks across keys that the per-key types cannot express."""
    d, p = cfg["dataset"], cfg["policy"]
    if d["state_key"] is None and not (d["use_ee_pose"] or d["use_qpos"]):
        raise ConfigError(
            "dataset.use_ee_pose and dataset.use_qpos are both false and dataset.state_key is null: "
            "the policy needs a state. Set one of them."
        )
    if d["near_target_estimate"] and not d["placement_estimate"]:
        raise ConfigError("dataset.near_target_estimate refines the placement estimate, but dataset.placement_estimate "
                          "is null: set it to the VLM folder vision_pretrain wrote (with --near_poses), or set "
                          "dataset.near_target_estimate: false.")
    if d["true_placement"] and d["placement_estimate"]:
        raise ConfigError("dataset.true_placement and dataset.placement_estimate both put a placement in the state: "
                          "set one of them (placement_estimate: null, or true_placement: false).")
    if not d["cameras"] or not all(isinstance(k, str) and isinstance(v, str) for k, v in d["cameras"].items()):
        raise ConfigError(f"dataset.cameras must map HDF5 camera names to lerobot names, got {d['cameras']!r}.")
    size = p["resize_imgs_with_padding"]
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"policy.resize_imgs_with_padding must be two positive integers, got {size!r}.")
    if size[0] != size[1]:
        # SmolVLM's connector (pixel shuffle) folds the patch grid as a square; lerobot also reads the pair
        # as (width, height). Only square images work.
        raise ConfigError(f"policy.resize_imgs_with_padding={size}: SmolVLA needs square images, e.g. [{size[0]}, {size[0]}].")
    if d["horizon"] != p["chunk_size"]:
        raise ConfigError(
            f"dataset.horizon ({d['horizon']}) must equal policy.chunk_size ({p['chunk_size']}): "
            "each sample carries one action chunk."
        )
    if p["n_action_steps"] > p["chunk_size"]:
        raise ConfigError(f"policy.n_action_steps ({p['n_action_steps']}) must not exceed policy.chunk_size "
                          f"({p['chunk_size']}): a prediction has chunk_size actions to execute.")
    if d["augment"] and d["decode"] == "cuda":
        raise ConfigError("dataset.augment needs dataset.decode=cpu: the augmentation works on images decoded in "
                          "the DataLoader workers.")
    betas = cfg["optimizer"]["betas"]
    if len(betas) != 2 or not all(isinstance(b, NUMBER) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {betas!r}.")


def save_config(cfg: dict, path):
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))


def markdown_reference(schema=SCHEMA, prefix="") -> str:
    """Every key with its default and meaning, as the README's config table (`python -m insertion_vla.config`)."""
    rows = [] if prefix else ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, field in schema.items():
        if isinstance(field, dict):
            rows.append(markdown_reference(field, prefix + key + "."))
        else:
            default = yaml.safe_dump(field.default, default_flow_style=True).strip().removesuffix("...").strip()
            valid = f" ({field.rule()})" if field.rule() else ""
            rows.append(f"| `{prefix}{key}` | `{default}` | {field.help}{valid} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_reference())
