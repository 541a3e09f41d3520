"""The training loop: SmolVLA on HDF5 episodes, one process per GPU (torchrun) or a single process.

`train(cfg, ...)` reads top to bottom: resume state, data, statistics, policy, then the loop: one optimizer
step (`update_policy`), then three decisions: log, validate/evaluate, save. Everything random is a function of
(seed, step, rank): the data order of (seed, epoch), the flow-matching noise and time of (seed, step, rank), so
a resumed run continues exactly where the checkpoint left off without carrying RNG states around.
"""

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from episode_format.atomic import remove_stale_temporaries
from episode_format.reader import discover_episodes
from insertion_vla import distributed as dist
from insertion_vla.bad_samples import BadSampleLog
from insertion_vla.checkpoint import BEST, find_resume_checkpoint, link_or_copy, load_checkpoint, prune_checkpoints, save_checkpoint
from insertion_vla.config import save_config
from insertion_vla.dataset import EpisodeDataset, bad_frames_of
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import UserError
from insertion_vla.export import export_pretrained
from insertion_vla.gpu_images import DeviceImageDecoder
from insertion_vla.localizer import estimator_from_config
from insertion_vla.monitor import RunMonitor, format_eval_line, format_train_line, format_val_line, system_metrics
from insertion_vla.optim import lr_at, make_optimizer, set_lr
from insertion_vla.plots import plot_loss_curves, plot_trajectories
from insertion_vla.policy import build_policy, make_training_loss, prepare_batch
from insertion_vla.run_state import RunState
from insertion_vla.spikes import LossWatch, SpikeLog
from insertion_vla.stats import check_stats_match, load_stats
from insertion_vla.validation import predict_episode, split_episodes, validate, validation_subset, write_validation_list

CHECKPOINT_FORMAT = 1
LOSS_NAMES = ("loss", "action_loss", "temporal_loss")


def train(cfg: dict, *, resume: str | None = None, reset_scheduler: bool = False, evaluate_fn=None) -> dict:
    """Train as `cfg` says. resume: None, a checkpoint path, or "auto" (the newest in output_dir, if any).

    evaluate_fn(policy, preprocessor, postprocessor, step) -> {name: value}: closed-loop evaluation, run on
    rank 0 every evaluation.freq steps when evaluation.enable (the library never imports the simulator: the
    script passes it in).
    Returns the last logged metrics (rank 0).
    """
    stop_requested = install_stop_handlers()  # from the start: a signal during setup stops after the first step
    runtime = dist.setup(cfg["training"]["device"])
    training, validation, evaluation = cfg["training"], cfg["validation"], cfg["evaluation"]
    out_dir = Path(cfg["output_dir"])
    ckpt_dir = out_dir / "checkpoints"

    # ---- resume state and data ----------------------------------------------------------------------------
    ckpt_path = find_resume_checkpoint(ckpt_dir) if resume == "auto" else resume
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if reset_scheduler and ckpt is None:
        raise UserError("--reset_scheduler needs a checkpoint to resume from (--resume PATH or --resume auto with one present).")
    keys = keys_from_config(cfg["dataset"])
    paths = discover_episodes(cfg["dataset"]["root_dir"])
    train_idx, val_idx = held_out_split(validation, paths, cfg["seed"], ckpt)
    train_set, val_set = episode_datasets(cfg, keys, paths, train_idx, val_idx)
    state = run_state(ckpt, paths, train_idx, val_idx, training["loss_spike_window"], reset_scheduler)
    end_step = state.schedule_start + training["steps"]

    # ---- statistics and policy ----------------------------------------------------------------------------
    stats = normalization_stats(cfg["normalization"], train_set)
    camera_keys = [f"observation.images.{name}" for name in keys.cameras.values()]
    if ckpt is not None:
        check_compatible(ckpt, ckpt_path, train_set, camera_keys, stats, cfg, runtime.is_main)
    policy, preprocessor, postprocessor = build_training_policy(cfg, ckpt, train_set, camera_keys, stats, runtime.device)
    objective = make_training_loss(policy, compile=training["compile"])
    if runtime.enabled:
        objective = DistributedDataParallel(objective, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    optimizer = make_optimizer(policy, cfg["optimizer"])
    if ckpt is not None and not reset_scheduler:  # --reset_scheduler: fresh AdamW state, warmup and decay from here
        optimizer.load_state_dict(ckpt["optimizer"])
    trainable = [p for p in policy.parameters() if p.requires_grad]

    # ---- outputs ------------------------------------------------------------------------------------------
    if runtime.is_main:
        prepare_output_dir(cfg, out_dir, val_idx, paths)
    monitor = RunMonitor(cfg, out_dir, active=runtime.is_main, start_step=state.step, end_step=end_step,
                         wandb_run_id=state.wandb_run_id)
    state.wandb_run_id = monitor.wandb_run_id  # the new run's, when W&B started one
    monitor.print("Resolved config:\n" + yaml.safe_dump(cfg, sort_keys=False))
    monitor.print(f"Training {len(train_set)} frames from {len(train_idx)} episodes ({len(val_idx)} held out) on "
                  f"{runtime.world_size} x {runtime.device.type}, steps {state.step} -> {end_step}"
                  + (f", resumed from {ckpt_path}" if ckpt else "") + (" (scheduler reset)" if reset_scheduler else ""))
    loss_watch = LossWatch(training, state.loss_history, monitor, SpikeLog(out_dir, state.step) if runtime.is_main else None, paths)
    bad_samples = BadSampleLog(out_dir, state.step, training["max_bad_samples"], monitor, runtime.is_main)
    autocast = make_autocast(runtime.device, training["use_bfloat16"])
    batches = micro_batches(train_set, runtime, training, cfg["seed"], state.epoch, state.batch_in_epoch)

    def save(is_best: bool):
        check_replicas_agree(trainable, state.step)
        if runtime.is_main:
            checkpoint = {"format_version": CHECKPOINT_FORMAT, **state.to_dict(), "model": policy.state_dict(),
                          "optimizer": optimizer.state_dict(), "config": cfg, "stats": stats_to_lists(stats),
                          "state_dim": train_set.state_dim, "action_dim": train_set.action_dim, "camera_keys": camera_keys}
            path = save_checkpoint(checkpoint, ckpt_dir, state.step)
            if is_best:
                link_or_copy(path, ckpt_dir / BEST)
            prune_checkpoints(ckpt_dir, training["keep_last_checkpoints"])
        dist.barrier()

    def due(freq):  # every `freq` steps, and at the last one
        return state.step % freq == 0 or state.step == end_step

    # ---- the loop -----------------------------------------------------------------------------------------
    metrics, window_start, window_start_step = {}, time.perf_counter(), state.step
    while state.step < end_step:
        result = update_policy(objective, optimizer, trainable, batches, preprocessor, state, cfg, runtime, autocast,
                               stop_requested)
        state.step, state.epoch, state.batch_in_epoch = state.step + 1, result.epoch, result.batch_in_epoch
        loss_watch.check(state.step, result.losses["train/loss"], result.finite, result.episodes, result.frames)
        bad_samples.check(state.step, result.bad_frames, result.bad_frames_on_some_rank)
        monitor.advance(state.step)

        if due(training["log_freq"]):
            s_per_step = (time.perf_counter() - window_start) / (state.step - window_start_step)
            metrics = {**result.losses, "train/learning_rate": result.lr, "train/grad_norm": result.grad_norm,
                       "train/epoch": state.epoch, **system_metrics(runtime.device)}
            monitor.print(format_train_line(state.step, end_step, state.schedule_start, metrics, s_per_step))
            monitor.log(state.step, metrics)
            window_start, window_start_step = time.perf_counter(), state.step

        is_best = False
        if val_set is not None and due(validation["val_freq"]):
            val_metrics = validate_and_plot(policy, preprocessor, postprocessor, val_set, cfg, runtime, autocast,
                                            monitor, bad_samples, state.step)
            is_best = val_metrics["val/loss"] < state.best_val_loss
            state.best_val_loss = min(state.best_val_loss, val_metrics["val/loss"])
            metrics.update(val_metrics)
        # closed-loop episodes in the simulator on rank 0; the other ranks wait at the next collective
        if evaluate_fn is not None and evaluation["enable"] and due(evaluation["freq"]) and runtime.is_main:
            eval_metrics = evaluate_fn(policy, preprocessor, postprocessor, state.step)
            monitor.print(format_eval_line(state.step, eval_metrics))
            monitor.log(state.step, eval_metrics)
            metrics.update(eval_metrics)

        if due(training["save_freq"]) or is_best or result.stop:
            save(is_best)
        if result.stop:
            monitor.print(f"Stop signal received: checkpoint written at step {state.step}; continue with --resume auto.")
            break

    batches.close()  # stop the DataLoader's workers now: left to garbage collection they can block the exit
    if state.step == end_step and runtime.is_main:
        final = export_pretrained(policy, preprocessor, postprocessor, ckpt_dir / "final_hf", train_cfg=cfg)
        monitor.print(f"Exported {final} (load with SmolVLAPolicy.from_pretrained)")
    dist.barrier()
    monitor.close()
    # DDP's reducer must not hold the last reference to the process group: freeing it there keeps the GIL while
    # gloo's threads may still need it, and the process hangs at the end (seen with two nodes on one machine)
    del objective
    dist.teardown()
    return metrics


def run_state(ckpt, paths, train_idx, val_idx, loss_window: int, reset_scheduler: bool) -> RunState:
    """A fresh run's state, or the checkpoint's (which continues the data order only on the same files)."""
    train_files, validation_files = [str(paths[i]) for i in train_idx], [str(paths[i]) for i in val_idx]
    if ckpt is None:
        return RunState.fresh(train_files, validation_files, loss_window)
    return RunState.from_checkpoint(ckpt, train_files, validation_files, loss_window, reset_scheduler=reset_scheduler)


def held_out_split(validation, paths, seed, ckpt) -> tuple[list[int], list[int]]:
    """-> (training, validation) indices into `paths`; a resumed run keeps holding out its checkpoint's files."""
    if not validation["enable"]:
        return list(range(len(paths))), []
    stored = ckpt.get("validation_files") if ckpt else None
    return split_episodes(paths, validation["num_episodes"], seed, stored)


def episode_datasets(cfg, keys, paths, train_idx, val_idx):
    """-> (training set, augmented when dataset.augment, decoded where dataset.decode says; held-out set, decoded
    on the CPU, or None when nothing is held out). Both replace samples that need a bad frame."""
    dataset = cfg["dataset"]
    common = dict(keys=keys, horizon=dataset["horizon"], image_size=cfg["policy"]["resize_imgs_with_padding"],
                  task_instruction=dataset["task_instruction"], seed=cfg["seed"], replace_bad_frames=True,
                  estimator=estimator_from_config(dataset))
    train_set = EpisodeDataset([paths[i] for i in train_idx], episode_indices=train_idx, decode=dataset["decode"],
                               augmentation=dataset["augmentation"] if dataset["augment"] else None, **common)
    val_set = EpisodeDataset([paths[i] for i in val_idx], episode_indices=val_idx, **common) if val_idx else None
    return train_set, val_set


def normalization_stats(normalization, train_set):
    """The stats file's statistics, checked against the data's dimensions; None when normalization is off."""
    if not normalization["enable"]:
        return None
    stats = load_stats(normalization["stats_file"])
    check_stats_match(stats, train_set.state_dim, train_set.action_dim, normalization["stats_file"])
    return stats


def build_training_policy(cfg, ckpt, train_set, camera_keys, stats, device):
    """-> (policy in train mode, preprocessor, postprocessor), with the checkpoint's weights when resuming."""
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    # resuming: every weight comes from the checkpoint, so neither the Hub nor the pretrained files are needed
    policy_cfg = {**cfg["policy"], "pretrained_model_id": None, "load_vlm_weights": False} if ckpt else cfg["policy"]
    policy, preprocessor, postprocessor = build_policy(
        policy_cfg, warn_random_vlm=ckpt is None, state_dim=train_set.state_dim, action_dim=train_set.action_dim, camera_keys=camera_keys,
        stats=stats, normalization_mode=cfg["normalization"]["mode"], device=device,
    )
    if ckpt is not None:
        policy.load_state_dict(ckpt["model"])
    policy.train()
    return policy, preprocessor, postprocessor


def check_replicas_agree(trainable, step):
    # DDP keeps replicas equal only if every rank applied the same updates: check before writing one copy
    sums = dist.gather_lists([sum(p.double().sum().item() for p in trainable)])
    if len(set(sums)) != 1:
        raise RuntimeError(f"step {step}: trainable parameters differ between ranks (sums {sums}); not saving.")


def prepare_output_dir(cfg, out_dir, val_idx, paths):
    """Rank 0, before the first step: output_dir cleaned of a killed run's leftovers, the config, the held-out list."""
    for directory in (out_dir, out_dir / "checkpoints", out_dir / "plots"):
        remove_stale_temporaries(directory)  # half-written files of a killed run
    save_config(cfg, out_dir / "config.yaml")  # creates output_dir, or says why it cannot
    if val_idx:
        write_validation_list(out_dir / "validation_episodes.txt", val_idx, paths)


@dataclass
class StepResult:
    """One optimizer step, its values averaged over ranks."""

    losses: dict  # train/loss, train/action_loss, train/temporal_loss
    grad_norm: float  # before clipping
    lr: float
    finite: bool  # losses and gradient norm finite; otherwise the update was skipped
    stop: bool  # some rank received a stop signal
    epoch: int  # the data position after this step's micro-batches
    batch_in_epoch: int
    episodes: list[int]  # this rank's samples of the step
    frames: list[int]
    bad_frames: list[dict]  # this rank's bad frames met loading the step's samples (replaced by others)
    bad_frames_on_some_rank: bool


def update_policy(objective, optimizer, trainable, batches, preprocessor, state: RunState, cfg, runtime, autocast,
                  stop_requested) -> StepResult:
    """One optimizer step at state.step: its learning rate and random seed, the gradient accumulated over
    training.gradient_accumulation_steps micro-batches from `batches`, clipped; skipped if anything is non-finite."""
    training = cfg["training"]
    accumulation = training["gradient_accumulation_steps"]
    lr = lr_at(state.step, state.schedule_start, cfg["optimizer"]["lr"], cfg["scheduler"])
    set_lr(optimizer, lr)
    torch.manual_seed(cfg["seed"] * 1_000_003 + state.step * 1009 + runtime.rank)  # noise and time of this step
    loss_sums = torch.zeros(len(LOSS_NAMES), device=runtime.device)
    episodes, frames, bad_frames = [], [], []
    for micro in range(accumulation):
        epoch, batch_in_epoch, raw = next(batches)
        bad_frames += bad_frames_of(raw)
        batch = prepare_batch(raw, preprocessor, runtime.device)
        last = micro == accumulation - 1
        sync = contextlib.nullcontext() if last or not runtime.enabled else objective.no_sync()
        with sync:
            with autocast():
                losses = objective(batch, training["lambda_temporal"])
            (losses["loss"] / accumulation).backward()
        loss_sums += torch.stack([losses[k].detach().float() for k in LOSS_NAMES]) / accumulation
        episodes += raw["episode_index"].tolist()
        frames += raw["frame_index"].tolist()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg["optimizer"]["grad_clip_norm"])
    # One host sync per step: the losses averaged over ranks, the gradient norm (already equal on every rank)
    # the stop votes and the bad-frame counts. A NaN/Inf on any rank makes the mean non-finite everywhere, so all
    # ranks skip the same steps, and every rank stops after the same step.
    *step_losses, grad_norm, stop_votes, bad_frame_counts = dist.mean_over_ranks(torch.cat([
        loss_sums, grad_norm.reshape(1).float(),
        torch.tensor([float(stop_requested()), float(len(bad_frames))], device=runtime.device)])).tolist()
    finite = all(map(math.isfinite, [*step_losses, grad_norm]))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(losses={f"train/{name}": value for name, value in zip(LOSS_NAMES, step_losses)},
                      grad_norm=grad_norm, lr=lr, finite=finite, stop=stop_votes > 0, epoch=epoch,
                      batch_in_epoch=batch_in_epoch, episodes=episodes, frames=frames, bad_frames=bad_frames,
                      bad_frames_on_some_rank=bad_frame_counts > 0)


def validate_and_plot(policy, preprocessor, postprocessor, val_set, cfg, runtime, autocast, monitor, bad_samples,
                      step) -> dict:
    """Validation metrics (every rank takes part), their console line and log, the bad frames it met logged as
    training's are; rank 0 also draws the plots."""
    validation, bad_frames = cfg["validation"], []
    val_metrics = validate(policy, preprocessor, postprocessor, validation_subset(val_set, validation["max_samples"]),
                           info=runtime, batch_size=validation["batch_size"], seed=cfg["seed"],
                           lambda_temporal=cfg["training"]["lambda_temporal"], autocast=autocast, bad_frames=bad_frames)
    bad_samples.check(step, bad_frames, val_metrics["val/bad_frames"] > 0)
    monitor.print(format_val_line(step, val_metrics))
    monitor.log(step, val_metrics)
    if runtime.is_main:
        monitor.log(step, {}, draw_validation_plots(policy, preprocessor, postprocessor, val_set, validation["plot_episodes"],
                                                    Path(cfg["output_dir"]), step, runtime, autocast))
    return val_metrics


def check_compatible(ckpt, ckpt_path, train_set, camera_keys, stats, cfg, is_main):
    """Refuse a checkpoint whose policy has other inputs/outputs; say when the stats changed (fine-tuning)."""
    problems = []
    if ckpt["action_dim"] != train_set.action_dim:
        problems.append(f"action dim {ckpt['action_dim']} vs {train_set.action_dim} in the data")
    if ckpt["state_dim"] != train_set.state_dim:
        problems.append(f"state dim {ckpt['state_dim']} vs {train_set.state_dim} in the data")
    if ckpt["camera_keys"] != camera_keys:
        problems.append(f"cameras {ckpt['camera_keys']} vs {camera_keys} in dataset.cameras")
    for key in ("resize_imgs_with_padding", "chunk_size", "max_state_dim", "max_action_dim", "vlm_model_name", "num_vlm_layers"):
        if ckpt["config"]["policy"][key] != cfg["policy"][key]:
            problems.append(f"policy.{key} {ckpt['config']['policy'][key]!r} vs {cfg['policy'][key]!r}")
    if problems:
        raise UserError(f"checkpoint {ckpt_path} does not fit this config: " + "; ".join(problems) +
                        ". Resume with the config it was trained with, or start a new output_dir.")
    if is_main and stats_to_lists(stats) != ckpt["stats"]:
        print(f"WARNING: normalizing with {cfg['normalization']['stats_file']}, which differs from the statistics "
              f"stored in {ckpt_path} (trained with {ckpt['config']['normalization']['stats_file']}); expected when "
              "fine-tuning on other data.")


def micro_batches(dataset, runtime, training, seed, epoch, start_batch):
    """Endless (epoch, batches done in the epoch, batch): DistributedSampler order per (seed, epoch), picking
    up after `start_batch` batches of `epoch` when resuming; images decoded on the device when dataset.decode=cuda."""
    on_device = DeviceImageDecoder(dataset, runtime.device) if dataset.decode == "cuda" else None
    sampler = DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True, seed=seed, drop_last=True)
    if len(sampler) < training["batch_size"]:
        raise UserError(f"the training set gives each of the {runtime.world_size} processes {len(sampler)} frames, fewer "
                        f"than training.batch_size={training['batch_size']}: lower the batch size or add episodes.")
    while True:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        order = list(sampler)[start_batch * training["batch_size"]:]
        loader = DataLoader(dataset, batch_size=training["batch_size"], sampler=order, drop_last=True,
                            num_workers=training["num_workers"], pin_memory=runtime.device.type == "cuda",
                            collate_fn=dataset.collate, generator=torch.Generator().manual_seed(seed + epoch),
                            worker_init_fn=ignore_stop_signals)
        for i, batch in enumerate(loader, start=start_batch + 1):
            yield epoch, i, on_device(batch) if on_device else batch
        epoch, start_batch = epoch + 1, 0


def make_autocast(device, use_bfloat16):
    if device.type == "cuda" and use_bfloat16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def install_stop_handlers():
    """SIGTERM / SIGUSR1 (cluster preemption) ask for a checkpoint at the end of the current step."""
    received = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    return lambda: bool(received)


def ignore_stop_signals(worker_id):
    """DataLoader worker_init_fn: stop signals from anyone but the training process are ignored.

    Stopping is the training process's decision, but SLURM signals every process of the job, and torch's worker
    handler dies of a SIGTERM not sent by its parent, failing the run before its checkpoint. A SIGTERM from the
    parent (multiprocessing's terminate) still ends the worker, as torch's handler does. Python handlers cannot see
    the sender, so the signals are blocked (threads started later inherit that) and taken by a thread.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_exit_on_stop_signal_from, args=(os.getppid(),), daemon=True).start()


def _exit_on_stop_signal_from(parent: int):
    while True:
        siginfo = signal.sigwaitinfo(STOP_SIGNALS)
        if siginfo.si_signo == signal.SIGTERM and siginfo.si_pid == parent:
            os._exit(0)


def stats_to_lists(stats):
    if stats is None:
        return None
    return {f: {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in s.items()} for f, s in stats.items()}


def draw_validation_plots(policy, preprocessor, postprocessor, val_set, n, out_dir, step, runtime, autocast):
    plots = out_dir / "plots"
    trajectories = []
    for pos in range(min(n, len(val_set.paths))):
        true, pred = predict_episode(policy, preprocessor, postprocessor, val_set, pos, runtime.device, autocast)
        trajectories.append((f"episode {val_set.episode_indices[pos]}", true, pred))
    plot_loss_curves(out_dir / "metrics.csv", plots / "loss.png")
    if not trajectories:  # validation.plot_episodes: 0
        return {}
    traj_png = plots / f"val_trajectories_step_{step}.png"
    plot_trajectories(trajectories, traj_png, f"Held-out episodes at step {step}: recorded vs. predicted")
    return {"val/trajectories": traj_png}
