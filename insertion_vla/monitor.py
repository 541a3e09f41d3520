"""What a run tells the people watching it: console lines, the progress bar, metrics.csv and W&B.

Only rank 0 creates a RunMonitor that does anything; other ranks get a silent one, so the loop calls the
same methods everywhere. Metrics are already averaged over ranks when they arrive here.
"""

import csv
import datetime
import netrc
import os
from pathlib import Path

import psutil
import torch
from tqdm import tqdm


def format_train_line(step, end_step, start_step, m: dict, s_per_step: float) -> str:
    done = (step - start_step) / max(1, end_step - start_step)
    eta = datetime.timedelta(seconds=round(s_per_step * (end_step - step)))
    return (
        f"[{100 * done:5.1f}%] Step {step}/{end_step} | Loss: {m['train/loss']:.4f} "
        f"(Action: {m['train/action_loss']:.4f}, Temporal: {m['train/temporal_loss']:.4f}) | "
        f"LR: {m['train/learning_rate']:.1e} | Grad: {m['train/grad_norm']:.2f} | {s_per_step:.2f} s/step | ETA {eta}"
    )


def format_val_line(step, m: dict) -> str:
    mae = ", ".join(f"{x:.2f}" for x in m.get("val/action_mae_deg", []))
    return f"[VAL] Step {step} | Loss: {m['val/loss']:.4f} | Action Loss: {m['val/action_loss']:.4f}" + (
        f" | MAE (deg): [{mae}]" if mae else "")


def format_eval_line(step, m: dict) -> str:
    return " | ".join([f"[EVAL] Step {step}", *(f"{k}: {v:.3f}" for k, v in m.items())])


def system_metrics(device) -> dict:
    out = {"system/ram_gb": psutil.Process().memory_info().rss / 2**30}
    if device.type == "cuda":
        out["system/vram_allocated_gb"] = torch.cuda.memory_allocated(device) / 2**30
    return out


def drop_rows_after(path: Path, step: int):
    """A resumed run redoes the steps after its checkpoint: forget what the killed run logged for them."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [ln for i, ln in enumerate(lines) if i == 0 or int(ln.split(",", 1)[0]) <= step]
    if len(kept) != len(lines):
        path.write_text("".join(kept))


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class RunMonitor:
    def __init__(self, cfg: dict, output_dir: Path, *, active: bool, start_step: int, end_step: int,
                 wandb_run_id: str | None):
        self.active = active
        self.wandb_run = None
        self.wandb_run_id = wandb_run_id
        if not active:
            return
        self.output_dir = output_dir
        self.metrics_path = output_dir / "metrics.csv"
        drop_rows_after(self.metrics_path, start_step)
        new = not self.metrics_path.exists()
        self._metrics_file = open(self.metrics_path, "a", newline="")
        self._metrics = csv.writer(self._metrics_file)
        if new:
            self._metrics.writerow(["step", "metric", "value"])
        self.bar = tqdm(total=end_step, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if cfg["wandb"]["enable"]:
            self._start_wandb(cfg)

    def _start_wandb(self, cfg):
        import wandb

        w = cfg["wandb"]
        mode = os.environ.get("WANDB_MODE")
        if mode is None and not wandb_credentials_present():
            mode = "offline"
            self.print("W&B: no API key (WANDB_API_KEY or `wandb login`), logging offline; `wandb sync` uploads later.")
        self.wandb_run = wandb.init(
            project=w["project"], entity=w["entity"], name=w["name"], tags=w["tags"], notes=w["notes"],
            config=cfg, dir=str(self.output_dir), id=self.wandb_run_id, resume="allow", mode=mode,
        )
        self.wandb_run_id = self.wandb_run.id

    def print(self, line: str):
        if self.active:
            tqdm.write(line)

    def advance(self, step: int):
        if self.active:
            self.bar.update(step - self.bar.n)

    def log(self, step: int, metrics: dict, images: dict | None = None):
        """Every metric to metrics.csv and W&B; a list value (per joint) becomes name/0, name/1, ..."""
        if not self.active:
            return
        flat = {}
        for name, value in metrics.items():
            if isinstance(value, (list, tuple)):
                flat.update({f"{name}/{i}": float(v) for i, v in enumerate(value)})
            else:
                flat[name] = float(value)
        for name, value in flat.items():
            self._metrics.writerow([step, name, repr(value)])
        self._metrics_file.flush()
        if self.wandb_run is not None:
            import wandb

            payload = dict(flat)
            for name, path in (images or {}).items():
                payload[name] = wandb.Image(str(path))
            self.wandb_run.log(payload, step=step)

    def close(self):
        if not self.active:
            return
        self.bar.close()
        self._metrics_file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
