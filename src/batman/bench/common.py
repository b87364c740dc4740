"""What every benchmark shares: the machine it ran on, timing on CPU and CUDA, a matmul peak, JSON output
(tables: batman.report.markdown_table).

Every speed figure is the median of several repetitions, and every comparison is between things
timed in the same process (repetitions interleaved, so a change in the machine's load hits both
sides alike).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from batman.files import atomic_write_text

DRV_GRID = (918, 1374)                # DRV's ground-truth / binned-input grid (H, W)
IN_CHANNELS = 4                       # packed raw
QUALITY_SEED = 1000                   # the benchmarks' synthetic data: not the seed of the tests (3) or the demo (0)


def machine_info() -> dict:
    """CPU model and cores, torch version and threads, and the CUDA device if any."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_average": [round(v, 2) for v in os.getloadavg()]}  # other work on the machine skews timings
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the export workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class MatmulPeak:
    """The FLOP rate of one large matrix product, the peak the models are compared with; timed inside the
    models' repetition loop so that it sees the same machine load.

    CPU: 2048x2048 float32 (torch's thread count), bfloat16 with `bf16` (the models then run under autocast);
    CUDA: 8192x8192 bfloat16 (what autocast runs).
    """

    def __init__(self, device: torch.device, bf16: bool = False):
        self.device = device
        cpu_dtype = torch.bfloat16 if bf16 else torch.float32
        self.n, self.dtype = (2048, cpu_dtype) if device.type == "cpu" else (8192, torch.bfloat16)
        self.a = torch.randn(self.n, self.n, device=device, dtype=self.dtype)
        self.b = torch.randn(self.n, self.n, device=device, dtype=self.dtype)
        self.times: list[float] = []
        for _ in range(2):
            self.a @ self.b

    def time_once(self) -> None:
        self.times.append(timed(lambda: self.a @ self.b, self.device))

    def summary(self) -> dict:
        return {"n": self.n, "dtype": str(self.dtype).replace("torch.", ""), "reps": len(self.times),
                "gflops": 2 * self.n ** 3 / statistics.median(self.times) / 1e9}



def tqdm_range(n: int, desc: str):
    from tqdm import tqdm
    return tqdm(range(n), desc=desc, leave=False, disable=None)
