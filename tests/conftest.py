"""Shared fixtures: the real raw files in ../shared/fixtures (tests skip where that folder is absent)."""
from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"raw fixture {name} not found in {FIXTURES} (clone beside ../shared to run it)")
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"no raw fixtures folder at {FIXTURES}")
    return FIXTURES


# --- miniature DRV-layout trees (test_drv.py, test_dataset.py, test_cache.py) ------------------

def build_drv(root: Path, ids=("0001", "0002"), frames: int = 3, size=(32, 48), exposures=None,
              long_exposure_s: float | None = 1.0, per_frame: tuple = (), lists: dict | None = None,
              target_scale: int = 1, pattern: str = "RGGB", black: float = 64, white: float = 4095,
              suffix: str = ".ARW", same_frames: bool = False, seed: int = 0) -> Path:
    """A tiny DRV tree: short/<id>/NNNNN<suffix> dark DNG frames (1/64 s unless `exposures` gives
    per-frame times), long/<id>/long.dng (`long_exposure_s`, None: no long raw), 16-bit ground truth
    of the bin-2 grid x target_scale (one per frame for ids in `per_frame`), and split lists
    (`lists`: {split: ids}; default all ids in train)."""
    import numpy as np

    from batman.data.raw import write_dng
    from batman.data.synth import write_png16
    rng = np.random.default_rng(seed)
    h, w = size
    for vid in ids:
        bayer = rng.integers(int(black) - 4, int(black) + 40, size=(h, w), dtype=np.uint16)
        for f in range(frames):
            if not same_frames:
                bayer = rng.integers(int(black) - 4, int(black) + 40, size=(h, w), dtype=np.uint16)
            exposure = exposures[f] if exposures else 1 / 64
            write_dng(root / "short" / vid / f"{f + 1:05d}{suffix}", bayer, pattern, black, white, exposure)
        if long_exposure_s is not None:
            write_dng(root / "long" / vid / "long.dng", np.full((32, 32), 2000, np.uint16), pattern, black,
                      white, long_exposure_s)
        (root / "long" / vid).mkdir(parents=True, exist_ok=True)
        th, tw = h // 4 * target_scale, w // 4 * target_scale
        for t in range(frames if vid in per_frame else 1):
            write_png16(root / "long" / vid / f"half{t + 1:04d}.png",
                        rng.integers(0, 65535, size=(th, tw, 3), dtype=np.uint16))
    for split, split_ids in (lists if lists is not None else {"train": ids}).items():
        (root / f"{split}_list.txt").write_text("".join(f"{i}\n" for i in split_ids))
    return root


@pytest.fixture
def make_drv(tmp_path):
    """build_drv(root=tmp_path/'drv', **options) -> root."""
    def build(root: Path | None = None, **options) -> Path:
        return build_drv(root or tmp_path / "drv", **options)
    return build


@pytest.fixture
def png16():
    """write_png16(path, rgb16): the package's 16-bit RGB PNG writer (uint16 values written as they are)."""
    from batman.data.synth import write_png16
    return write_png16


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and spinning OpenMP workers slow a busy machine down."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
