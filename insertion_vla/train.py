"""The training loop: SmolVLA on HDF5 episodes, one process per GPU (torchrun) or a single process.

`train(cfg, ...)` reads top to bottom: resume state, data, statistics, policy, then the loop. Everything
random is a function of (seed, step, rank): the data order of (seed, epoch), the flow-matching noise and
time of (seed, step, rank), so a resumed run continues exactly where the checkpoint left off without
carrying RNG states around.
"""

import contextlib
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from episode_format.atomic import remove_stale_temporaries
from episode_format.reader import discover_episodes
from insertion_vla import distributed as dist
from insertion_vla.checkpoint import BEST, find_resume_checkpoint, link_or_copy, load_checkpoint, prune_checkpoints, save_checkpoint
from insertion_vla.config import save_config
from insertion_vla.dataset import EpisodeDataset
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import UserError
from insertion_vla.export import export_pretrained
from insertion_vla.monitor import RunMonitor, format_train_line, format_val_line, system_metrics
from insertion_vla.optim import lr_at, make_optimizer, set_lr
from insertion_vla.plots import plot_loss_curves, plot_trajectories
from insertion_vla.policy import build_policy, make_training_loss, prepare_batch
from insertion_vla.spikes import LossSpikeDetector, SpikeLog, spike_line
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
    info = dist.setup(cfg["training"]["device"])
    t_cfg, v_cfg = cfg["training"], cfg["validation"]
    out_dir = Path(cfg["output_dir"])
    ckpt_dir = out_dir / "checkpoints"

    # ---- resume state -------------------------------------------------------------------------------------
    ckpt_path = find_resume_checkpoint(ckpt_dir) if resume == "auto" else resume
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if reset_scheduler and ckpt is None:
        raise UserError("--reset_scheduler needs a checkpoint to resume from (--resume PATH or --resume auto with one present).")

    # ---- data ---------------------------------------------------------------------------------------------
    keys = keys_from_config(cfg["dataset"])
    paths = discover_episodes(cfg["dataset"]["root_dir"])
    if v_cfg["enable"]:
        stored = ckpt.get("validation_files") if ckpt else None
        train_idx, val_idx = split_episodes(paths, v_cfg["num_episodes"], cfg["seed"], stored)
    else:
        train_idx, val_idx = list(range(len(paths))), []
    common = dict(keys=keys, horizon=cfg["dataset"]["horizon"], image_size=cfg["policy"]["resize_imgs_with_padding"],
                  task_instruction=cfg["dataset"]["task_instruction"], seed=cfg["seed"])
    train_set = EpisodeDataset([paths[i] for i in train_idx], episode_indices=train_idx,
                               augmentation=cfg["dataset"]["augmentation"] if cfg["dataset"]["augment"] else None, **common)
    val_set = EpisodeDataset([paths[i] for i in val_idx], episode_indices=val_idx, **common) if val_idx else None

    # ---- statistics and policy ----------------------------------------------------------------------------
    stats = None
    if cfg["normalization"]["enable"]:
        stats = load_stats(cfg["normalization"]["stats_file"])
        check_stats_match(stats, train_set.state_dim, train_set.action_dim, cfg["normalization"]["stats_file"])
    camera_keys = [f"observation.images.{name}" for name in keys.cameras.values()]
    if ckpt is not None:
        check_compatible(ckpt, ckpt_path, train_set, camera_keys, stats, cfg, info.is_main)
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    # resuming: every weight comes from the checkpoint, so neither the Hub nor the pretrained files are needed
    policy_cfg = {**cfg["policy"], "pretrained_model_id": None, "load_vlm_weights": False} if ckpt else cfg["policy"]
    policy, preprocessor, postprocessor = build_policy(
        policy_cfg, warn_random_vlm=ckpt is None, state_dim=train_set.state_dim, action_dim=train_set.action_dim, camera_keys=camera_keys,
        stats=stats, normalization_mode=cfg["normalization"]["mode"], device=info.device,
    )
    if ckpt is not None:
        policy.load_state_dict(ckpt["model"])
    policy.train()
    objective = make_training_loss(policy, compile=t_cfg["compile"])
    if info.enabled:
        objective = DistributedDataParallel(objective, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    optimizer = make_optimizer(policy, cfg["optimizer"])
    trainable = [p for p in policy.parameters() if p.requires_grad]

    step = ckpt["step"] if ckpt else 0
    if ckpt is not None and not reset_scheduler:
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule_start = ckpt["schedule_start"]
    else:
        schedule_start = step  # fresh run, or --reset_scheduler: warmup and decay start here, fresh AdamW state
    end_step = schedule_start + t_cfg["steps"]
    # The data order, the loss history and the best validation loss continue only on the same training files;
    # other data (fine-tuning on real episodes, files added) starts them afresh.
    same_data = ckpt is not None and ckpt["train_files"] == [str(paths[i]) for i in train_idx]
    epoch, batch_in_epoch = (ckpt["epoch"], ckpt["batch_in_epoch"]) if same_data else (0, 0)

    # ---- outputs ------------------------------------------------------------------------------------------
    if info.is_main:
        for directory in (out_dir, ckpt_dir, out_dir / "plots"):
            remove_stale_temporaries(directory)  # half-written files of a killed run
        save_config(cfg, out_dir / "config.yaml")  # creates output_dir, or says why it cannot
        if val_idx:
            write_validation_list(out_dir / "validation_episodes.txt", val_idx, paths)
    monitor = RunMonitor(cfg, out_dir, active=info.is_main, start_step=step, end_step=end_step,
                         wandb_run_id=ckpt.get("wandb_run_id") if ckpt else None)
    monitor.print("Resolved config:\n" + yaml.safe_dump(cfg, sort_keys=False))
    monitor.print(f"Training {len(train_set)} frames from {len(train_idx)} episodes ({len(val_idx)} held out) on "
                  f"{info.world_size} x {info.device.type}, steps {step} -> {end_step}"
                  + (f", resumed from {ckpt_path}" if ckpt else "") + (" (scheduler reset)" if reset_scheduler else ""))
    spike_log = SpikeLog(out_dir, step) if info.is_main else None
    spikes = LossSpikeDetector(t_cfg["loss_spike_threshold"], t_cfg["loss_spike_window"],
                               ckpt["loss_history"] if same_data else [])
    best_val = ckpt["best_val_loss"] if same_data else float("inf")
    autocast = make_autocast(info.device, t_cfg["use_bfloat16"])
    batches = micro_batches(train_set, info, t_cfg, cfg["seed"], epoch, batch_in_epoch)

    def checkpoint_state():
        return {
            "format_version": CHECKPOINT_FORMAT, "step": step, "schedule_start": schedule_start,
            "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "model": policy.state_dict(), "optimizer": optimizer.state_dict(), "config": cfg,
            "stats": stats_to_lists(stats), "state_dim": train_set.state_dim, "action_dim": train_set.action_dim,
            "camera_keys": camera_keys, "validation_files": [str(paths[i]) for i in val_idx],
            "train_files": [str(paths[i]) for i in train_idx], "loss_history": list(spikes.recent),
            "best_val_loss": best_val, "wandb_run_id": monitor.wandb_run_id,
        }

    def save(is_best: bool = False):
        # DDP keeps replicas equal only if every rank applied the same updates: check before writing one copy
        sums = dist.gather_lists([sum(p.double().sum().item() for p in trainable)])
        if len(set(sums)) != 1:
            raise RuntimeError(f"step {step}: trainable parameters differ between ranks (sums {sums}); not saving.")
        if info.is_main:
            path = save_checkpoint(checkpoint_state(), ckpt_dir, step)
            if is_best:
                link_or_copy(path, ckpt_dir / BEST)
            prune_checkpoints(ckpt_dir, t_cfg["keep_last_checkpoints"])
        dist.barrier()

    # ---- the loop -----------------------------------------------------------------------------------------
    metrics, nonfinite_in_a_row, window_start = {}, 0, time.perf_counter()
    window_steps = 0
    while step < end_step:
        lr = lr_at(step, schedule_start, cfg["optimizer"]["lr"], cfg["scheduler"])
        set_lr(optimizer, lr)
        torch.manual_seed(cfg["seed"] * 1_000_003 + step * 1009 + info.rank)  # noise and time of this step
        loss_sums = torch.zeros(len(LOSS_NAMES), device=info.device)
        episodes, frames = [], []
        for micro in range(t_cfg["gradient_accumulation_steps"]):
            epoch, batch_in_epoch, raw = next(batches)
            batch = prepare_batch(raw, preprocessor, info.device)
            last = micro == t_cfg["gradient_accumulation_steps"] - 1
            sync = contextlib.nullcontext() if last or not info.enabled else objective.no_sync()
            with sync:
                with autocast():
                    losses = objective(batch, t_cfg["lambda_temporal"])
                (losses["loss"] / t_cfg["gradient_accumulation_steps"]).backward()
            loss_sums += torch.stack([losses[k].detach().float() for k in LOSS_NAMES]) / t_cfg["gradient_accumulation_steps"]
            episodes += raw["episode_index"].tolist()
            frames += raw["frame_index"].tolist()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg["optimizer"]["grad_clip_norm"])
        # One host sync per step: the losses averaged over ranks, the gradient norm (already equal on every rank)
        # and the stop votes. A NaN/Inf on any rank makes the mean non-finite everywhere, so all ranks skip the
        # same steps, and every rank stops after the same step.
        *step_losses, grad_norm, stop_votes = dist.mean_over_ranks(torch.cat([
            loss_sums, grad_norm.reshape(1).float(), torch.tensor([float(stop_requested())], device=info.device)])).tolist()
        finite, stop = all(map(math.isfinite, [*step_losses, grad_norm])), stop_votes > 0
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1

        step_metrics = {f"train/{name}": value for name, value in zip(LOSS_NAMES, step_losses)}
        if finite:
            nonfinite_in_a_row = 0
            is_spike, avg, ratio = spikes.update(step_metrics["train/loss"])
            if is_spike:  # every rank sees the same averaged loss, so all take part in the gather
                all_episodes, all_frames = dist.gather_lists(episodes), dist.gather_lists(frames)
                line = spike_line(step, step_metrics["train/loss"], avg, ratio, all_episodes)
                monitor.print(line)
                monitor.log(step, {"spike/loss": step_metrics["train/loss"], "spike/ratio": ratio})
                if spike_log:
                    spike_log.write(line, sample_row(step, step_metrics["train/loss"], avg, ratio, all_episodes, all_frames, paths))
        else:
            nonfinite_in_a_row += 1
            all_episodes, all_frames = dist.gather_lists(episodes), dist.gather_lists(frames)
            line = (f"⚠️  NON-FINITE loss/gradient at step {step}: update skipped ({nonfinite_in_a_row} in a row) | "
                    f"Episodes: {sorted(set(all_episodes))}")
            monitor.print(line)
            monitor.log(step, {"train/nonfinite_steps": nonfinite_in_a_row})
            if spike_log:
                spike_log.write(line, sample_row(step, step_metrics["train/loss"], float("nan"), float("nan"),
                                                 all_episodes, all_frames, paths))
            if nonfinite_in_a_row >= t_cfg["max_nonfinite_steps"]:
                raise UserError(
                    f"{nonfinite_in_a_row} steps in a row had a non-finite loss or gradient (last at step {step}); "
                    f"the last batch came from episodes {sorted(set(all_episodes))}, frames {all_frames}. Check those "
                    "files (compute_dataset_stats.py flags NaN/Inf), lower optimizer.lr, or resume from an earlier checkpoint."
                )
        monitor.advance(step)

        if step % t_cfg["log_freq"] == 0 or step == end_step:
            s_per_step = (time.perf_counter() - window_start) / window_steps
            metrics = {**step_metrics, "train/learning_rate": lr, "train/grad_norm": grad_norm,
                       "train/epoch": epoch, **system_metrics(info.device)}
            monitor.print(format_train_line(step, end_step, schedule_start, metrics, s_per_step))
            monitor.log(step, metrics)
            window_start, window_steps = time.perf_counter(), 0

        is_best = False
        if val_set is not None and (step % v_cfg["val_freq"] == 0 or step == end_step):
            val_metrics = validate(policy, preprocessor, postprocessor, validation_subset(val_set, v_cfg["max_samples"]),
                                   info=info, batch_size=v_cfg["batch_size"], seed=cfg["seed"],
                                   lambda_temporal=t_cfg["lambda_temporal"], autocast=autocast)
            is_best = val_metrics["val/loss"] < best_val
            best_val = min(best_val, val_metrics["val/loss"])
            monitor.print(format_val_line(step, val_metrics))
            monitor.log(step, val_metrics)
            if info.is_main:
                monitor.log(step, {}, draw_validation_plots(policy, preprocessor, postprocessor, val_set,
                                                            v_cfg["plot_episodes"], out_dir, step, info, autocast))
            metrics.update(val_metrics)
        e_cfg = cfg["evaluation"]
        if evaluate_fn is not None and e_cfg["enable"] and (step % e_cfg["freq"] == 0 or step == end_step):
            if info.is_main:  # closed-loop episodes in the simulator; the other ranks wait at the next collective
                eval_metrics = evaluate_fn(policy, preprocessor, postprocessor, step)
                monitor.print(" | ".join([f"[EVAL] Step {step}", *(f"{k}: {v:.3f}" for k, v in eval_metrics.items())]))
                monitor.log(step, eval_metrics)
                metrics.update(eval_metrics)

        if step % t_cfg["save_freq"] == 0 or step == end_step or is_best or stop:
            save(is_best)
        if stop:
            monitor.print(f"Stop signal received: checkpoint written at step {step}; continue with --resume auto.")
            break

    batches.close()  # stop the DataLoader's workers now: left to garbage collection they can block the exit
    if step == end_step and info.is_main:
        final = export_pretrained(policy, preprocessor, postprocessor, ckpt_dir / "final_hf")
        monitor.print(f"Exported {final} (load with SmolVLAPolicy.from_pretrained)")
    dist.barrier()
    monitor.close()
    # DDP's reducer must not hold the last reference to the process group: freeing it there keeps the GIL while
    # gloo's threads may still need it, and the process hangs at the end (seen with two nodes on one machine)
    del objective
    dist.teardown()
    return metrics


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


def micro_batches(dataset, info, t_cfg, seed, epoch, start_batch):
    """Endless (epoch, batches done in the epoch, batch): DistributedSampler order per (seed, epoch), picking
    up after `start_batch` batches of `epoch` when resuming."""
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True)
    if len(sampler) < t_cfg["batch_size"]:
        raise UserError(f"the training set gives each of the {info.world_size} processes {len(sampler)} frames, fewer "
                        f"than training.batch_size={t_cfg['batch_size']}: lower the batch size or add episodes.")
    while True:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        order = list(sampler)[start_batch * t_cfg["batch_size"]:]
        loader = DataLoader(dataset, batch_size=t_cfg["batch_size"], sampler=order, drop_last=True,
                            num_workers=t_cfg["num_workers"], pin_memory=info.device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed + epoch), worker_init_fn=ignore_stop_signals)
        for i, batch in enumerate(loader, start=start_batch + 1):
            yield epoch, i, batch
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
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(0)


def stats_to_lists(stats):
    if stats is None:
        return None
    return {f: {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in s.items()} for f, s in stats.items()}


def sample_row(step, loss, avg, ratio, episodes, frames, paths):
    return {"step": step, "loss": loss, "avg": avg, "ratio": ratio, "episode_indices": episodes,
            "files": [paths[e].name for e in episodes], "frame_indices": frames}


def draw_validation_plots(policy, preprocessor, postprocessor, val_set, n, out_dir, step, info, autocast):
    plots = out_dir / "plots"
    trajectories = []
    for pos in range(min(n, len(val_set.paths))):
        true, pred = predict_episode(policy, preprocessor, postprocessor, val_set, pos, info.device, autocast)
        trajectories.append((f"episode {val_set.episode_indices[pos]}", true, pred))
    traj_png = plots / f"val_trajectories_step_{step}.png"
    plot_trajectories(trajectories, traj_png, f"Held-out episodes at step {step}: recorded vs. predicted")
    plot_loss_curves(out_dir / "metrics.csv", plots / "loss.png")
    return {"val/trajectories": traj_png}
