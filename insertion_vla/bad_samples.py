"""Bad frames met in training and validation: each logged once, counted over all ranks, the run stopped past a limit.

The dataset replaces a sample that needs a bad frame (insertion_vla.dataset: a JPEG that does not decode, an
unreadable frame, a NaN/Inf state or action row) and says so in the sample; the step (and each validation) hands
those records here.
A bad frame is counted once however often it is met (every epoch, or in several samples' action chunks), printed
and appended to output_dir/bad_samples.csv at once; more than training.max_bad_samples of them stop the run with
an error naming the files. A resumed run keeps the frames its checkpoint's step had met (rank 0's log, shared).
"""

import csv
from collections import Counter
from pathlib import Path

from insertion_vla import distributed as dist
from insertion_vla.errors import UserError
from insertion_vla.monitor import drop_rows_after

CSV_HEADER = ["step", "file", "camera", "frame", "problem"]
FILE_NAME = "bad_samples.csv"


def _key(record: dict) -> tuple:
    """A frame is one bad frame whatever found it (the worker's OpenCV or the device's decoder)."""
    return record["file"], record["camera"], int(record["frame"])


class BadSampleLog:
    def __init__(self, output_dir: Path, resume_step: int, max_bad: int, monitor, is_main: bool):
        """Every rank builds one; rank 0 keeps the CSV (its rows after resume_step dropped: they are redone)."""
        self.max_bad, self.monitor = max_bad, monitor
        self.csv = Path(output_dir) / FILE_NAME if is_main else None
        known = []
        if self.csv is not None:
            drop_rows_after(self.csv, resume_step)
            if self.csv.is_file():
                with open(self.csv, newline="") as f:
                    known = list(csv.DictReader(f))
            else:
                with open(self.csv, "w", newline="") as f:
                    csv.writer(f).writerow(CSV_HEADER)
        self.met = {_key(r): r for r in dist.gather_lists(known)}  # rank 0's rows on every rank

    def check(self, step: int, records: list[dict], on_some_rank: bool):
        """records: this rank's bad frames of the step; on_some_rank: any rank has some (the same on all ranks,
        so all take part in the gather). Raises UserError once more than max_bad distinct frames were met."""
        if not on_some_rank:
            return
        for record in dist.gather_lists(records):
            if _key(record) in self.met:
                continue
            self.met[_key(record)] = record
            self.monitor.print(f"⚠️  BAD FRAME at step {step}, sample replaced by another ({_frames(len(self.met))}; "
                               f"the run stops past training.max_bad_samples={self.max_bad}): {record['file']}: "
                               f"{record['problem']}")
            self.monitor.log(step, {"train/bad_frames": len(self.met)})
            if self.csv is not None:
                with open(self.csv, "a", newline="") as f:
                    csv.writer(f).writerow([step, *(record[k] for k in CSV_HEADER[1:])])
        if len(self.met) > self.max_bad:
            files = Counter(r["file"] for r in self.met.values())
            raise UserError(
                f"{_frames(len(self.met))} met by step {step}, more than training.max_bad_samples={self.max_bad}, in "
                + ", ".join(f"{file} ({n})" for file, n in sorted(files.items()))
                + f". {FILE_NAME} in output_dir lists each frame and its problem. Fix or remove those episodes "
                "(compute_dataset_stats.py --skip_bad lists bad files), or raise training.max_bad_samples."
            )


def _frames(n: int) -> str:
    return f"{n} bad frame" + ("" if n == 1 else "s")
