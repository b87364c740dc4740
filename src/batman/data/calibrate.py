"""Calibrate a camera's noise from dark and flat frames (ELD: Wei et al., CVPR 2020; photon transfer curve).

One raw pixel in DN, c its CFA channel and r its row (the model noise.py synthesises):

    D = b_c + K e + n_read + n_row(r) + n_q,    e ~ Poisson(electrons),  n_read ~ s TL(lambda),
                                                n_row(r) ~ N(0, sigma_row^2),  n_q ~ U(-q/2, q/2)

Dark frames (lens cap on, the exposure and ISO of the footage: e = 0), centred per frame and channel,
m_r the mean of row r (W pixels), x = D - b_c - m_r the residual:
    black         b_c = mean of channel c over the dark frames
    pixel noise   sigma_pix^2 = var(x) W / (W - 1)                     (a row mean holds 1/W of it)
    row noise     sigma_row^2 = var(m_r) - sigma_pix^2 / W
    quantisation  q = the smallest step between the DN values that occur
    read noise    sigma_read^2 = sigma_pix^2 - q^2 / 12  (Gaussian sigma), its shape
                  lambda = argmax of the Tukey-lambda probability plot correlation of x (as ELD),
                  scale s = sigma_read / sqrt(var TL(lambda))
Flat frames, pairs of one exposure at several brightnesses (the scene's pattern cancels in D1 - D2):
    mu = mean(D1 + D2) / 2 - b_c,   v = var(D1 - D2) / 2      per channel and pair
    v = K mu + v_0                  weighted least squares: K in DN per electron (the slope)
Files are grouped by their EXIF ISO, one profile each. What is not a dark or a flat frame (a
scene, a saturated or too dark flat, a copied frame) is refused with a one-line reason.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from batman.config import BatmanError
from batman.data.drv import raw_folder
from batman.data.noise import CAMERA_FORMAT, tukey_lambda_variance
from batman.data.raw import RawFrame, canonical_offsets, read_raw
from batman.files import atomic_write_text
from batman.report import pyplot, save_figure

DARK_MAX_ABOVE_BLACK = 0.01   # a dark frame's channel means lie within 1% of the range above the file's black
FLAT_MIN_SNR = 10.0           # a flat's mean signal: at least 10 x the read noise
FLAT_MAX_CLIPPED = 0.001      # at most 0.1% of a flat's pixels within 2% of white
PAIR_TOLERANCE = 0.05         # the two frames of a flat pair: means within 5%
MIN_BRIGHTNESS_SPAN = 2.0     # the brightest flat pair at least 2x the darkest (a slope needs a span)
PPCC_SAMPLES = 50_000         # residuals for the Tukey lambda shape fit
LAMBDA_BRACKET = (-0.3, 0.3)


# --- frames -------------------------------------------------------------------------------------

def raw_files(folder: str | Path, kind: str) -> list[Path]:
    """The raw files in a folder, by name (sidecars such as the JPEGs of RAW+JPEG shooting are skipped)."""
    return raw_folder(folder, f"calibrate: {kind}")


def frame_iso(path: str | Path) -> int | None:
    """EXIF ISO: LibRaw's, else the TIFF tag ISOSpeedRatings (IFD0 or EXIF IFD); None when unknown."""
    import rawpy
    import tifffile
    try:
        with rawpy.imread(str(path)) as rp:
            iso = float(rp.other.iso_speed)
        if iso <= 0:
            with tifffile.TiffFile(path) as tif:
                tags = tif.pages[0].tags
                exif = tags["ExifTag"].value if "ExifTag" in tags else {}
                value = tags["ISOSpeedRatings"].value if "ISOSpeedRatings" in tags else exif.get("ISOSpeedRatings", 0)
                iso = float(np.ravel(value)[0])
    except Exception:  # read_raw reports unreadable files; a missing or odd ISO tag just means unknown
        return None
    return int(round(iso)) if iso > 0 else None


def channels(frame: RawFrame) -> list[np.ndarray]:
    """The mosaic's four canonical channels R, G1, G2, B as float64 (H/2, W/2) arrays."""
    h, w = frame.height // 2 * 2, frame.width // 2 * 2
    mosaic = frame.bayer_u16[:h, :w]
    return [mosaic[dy::2, dx::2].astype(np.float64) for dy, dx in canonical_offsets(frame.pattern)]


def file_range(frame: RawFrame) -> float:
    return frame.white - max(frame.black)


# --- darks --------------------------------------------------------------------------------------

@dataclass
class DarkFit:
    """What the dark frames of one ISO say; `residuals` and `row_means` are kept for the plot."""
    black: list[float]
    black_file: list[float]
    read_sigma: float
    read_scale: float
    read_lambda: float
    row_sigma: float
    pixel_sigma: float
    quant_step: float
    frames: int
    exposure_s: float | None
    width: int                                  # pixels per row mean
    residuals: np.ndarray = field(repr=False)
    row_means: np.ndarray = field(repr=False)


def check_dark(frame: RawFrame, means: list[float]) -> None:
    above = max(m - b for m, b in zip(means, frame.black))
    if above > DARK_MAX_ABOVE_BLACK * file_range(frame):
        raise BatmanError(f"not a dark frame: {frame.path} (mean {above:.0f} DN above the black level "
                          f"{min(frame.black):g}, {100 * above / file_range(frame):.1f}% of the range; "
                          f"shoot with the lens cap on at the footage's exposure and ISO)")


def dark_statistics(frame: RawFrame, rng: np.random.Generator, samples: int):
    """One dark frame -> (channel means, row means, residual sum of squares and count, a residual sample,
    the DN values that occur)."""
    chans = channels(frame)
    means = [float(c.mean()) for c in chans]
    check_dark(frame, means)
    centred = np.empty((2 * chans[0].shape[0], 2 * chans[0].shape[1]))
    for c, m, (dy, dx) in zip(chans, means, canonical_offsets(frame.pattern)):
        centred[dy::2, dx::2] = c - m
    row_means = centred.mean(axis=1)
    residual = centred - row_means[:, None]
    sample = rng.choice(residual.ravel(), size=min(samples, residual.size), replace=False)
    values = np.flatnonzero(np.bincount(frame.bayer_u16.ravel()))
    return means, row_means, float(np.sum(residual ** 2)), residual.size, sample, values, centred.shape[1]


def quantisation_step(values: np.ndarray) -> float:
    steps = np.diff(np.unique(values))
    return float(steps.min()) if steps.size else 1.0


def tukey_shape(sample: np.ndarray) -> float:
    """ELD's fit: the Tukey lambda whose probability plot is straightest for the residuals."""
    from scipy import stats
    return float(stats.ppcc_max(sample, brack=LAMBDA_BRACKET, dist="tukeylambda"))


def fit_darks(paths: list[Path], reference: RawFrame, seed: int = 0) -> DarkFit:
    """Read the dark frames one at a time and fit black, pixel, row, read noise and quantisation."""
    rng = np.random.default_rng(seed)
    per_frame = max(1, PPCC_SAMPLES // len(paths))
    means, rows, sq, n, samples, values, width = [], [], 0.0, 0, [], [], 0
    for path in paths:
        frame = read_raw(path)
        check_same_camera([reference, frame])
        m, r, s, k, sample, v, width = dark_statistics(frame, rng, per_frame)
        means.append(m), rows.append(r), samples.append(sample), values.append(v)
        sq, n = sq + s, n + k
    pixel_var = sq / n * width / (width - 1)
    row_means = np.concatenate(rows)
    q = quantisation_step(np.concatenate(values))
    read_var = max(pixel_var - q * q / 12.0, 1e-12)
    residuals = np.concatenate(samples)
    lam = tukey_shape(residuals)
    return DarkFit(black=np.mean(means, axis=0).tolist(), black_file=list(frame.black),
                   read_sigma=math.sqrt(read_var), read_scale=math.sqrt(read_var / tukey_lambda_variance(lam)),
                   read_lambda=lam, row_sigma=math.sqrt(max(np.var(row_means) - pixel_var / width, 0.0)),
                   pixel_sigma=math.sqrt(pixel_var), quant_step=q, frames=len(paths),
                   exposure_s=frame.exposure_s, width=width, residuals=residuals, row_means=row_means)


# --- flats --------------------------------------------------------------------------------------

@dataclass
class PTCFit:
    """The photon transfer curve of one ISO: v = k mu + v0, from (mu, v) per channel and pair."""
    k: float
    v0: float
    mu: np.ndarray      # (pairs, 4)
    var: np.ndarray     # (pairs, 4)
    pairs: list[tuple[str, str]]


def check_flat(frame: RawFrame, level: float, dark: DarkFit) -> None:
    clipped = float(np.mean(frame.bayer_u16 >= frame.white - 0.02 * file_range(frame)))
    if clipped > FLAT_MAX_CLIPPED:
        raise BatmanError(f"flat frame saturated: {frame.path} ({100 * clipped:.1f}% of the pixels at white "
                          f"{frame.white:g}; shorten the exposure or dim the light)")
    if level < FLAT_MIN_SNR * dark.read_sigma:
        raise BatmanError(f"flat frame too dark: {frame.path} (mean {level:.1f} DN above black, under "
                          f"{FLAT_MIN_SNR:g} x the read noise {dark.read_sigma:.2f} DN; lengthen the exposure)")


def pair_point(a: RawFrame, b: RawFrame, black: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(mu, v) per channel of two flat frames: mean signal above black and half the difference's variance."""
    mu, var = [], []
    for ca, cb, bl in zip(channels(a), channels(b), black):
        mu.append((ca.mean() + cb.mean()) / 2 - bl)
        var.append(np.var(ca - cb) / 2)
    if max(var) == 0:
        raise BatmanError(f"flat frames {a.path} and {b.path} are identical: copies of one frame, not two exposures")
    return np.array(mu), np.array(var)


def flat_points(paths: list[Path], dark: DarkFit, reference: RawFrame) -> list[tuple]:
    """(mu, v, names) of each pair: consecutive frames (by name) of one exposure whose means agree
    within PAIR_TOLERANCE. At most two frames in memory."""
    points, previous = [], None
    for path in paths:
        frame = read_raw(path)
        check_same_camera([reference, frame])
        level = float(np.mean([c.mean() - b for c, b in zip(channels(frame), dark.black)]))
        check_flat(frame, level, dark)
        if previous is not None and frame.exposure_s == previous[0].exposure_s \
                and abs(level - previous[1]) <= PAIR_TOLERANCE * max(level, previous[1]):
            points.append((*pair_point(previous[0], frame, dark.black), (previous[0].path, frame.path)))
            previous = None
        else:
            previous = (frame, level)
    return points


def fit_ptc(paths: list[Path], dark: DarkFit, reference: RawFrame) -> PTCFit:
    points = flat_points(paths, dark, reference)
    folder = paths[0].parent
    if not points:
        raise BatmanError(f"calibrate: no pair of flat frames in {folder} (two consecutive files of one exposure "
                          f"whose means agree within {100 * PAIR_TOLERANCE:g}%)")
    mu, var = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    levels = mu.mean(axis=1)
    if levels.max() < MIN_BRIGHTNESS_SPAN * levels.min():
        raise BatmanError(f"calibrate: the flat pairs in {folder} span {levels.min():.0f}-{levels.max():.0f} DN; "
                          f"shoot pairs at several brightnesses, the brightest at least {MIN_BRIGHTNESS_SPAN:g}x "
                          f"the darkest")
    # the spread of a variance estimate grows with the variance: weight each residual by 1/v
    k, v0 = np.polyfit(mu.ravel(), var.ravel(), 1, w=1.0 / var.ravel())
    if k <= 0:
        raise BatmanError(f"calibrate: the flats in {folder} give a photon transfer slope of {k:.3g} DN per "
                          f"electron; variance must grow with brightness (are these flat frames?)")
    return PTCFit(k=float(k), v0=float(v0), mu=mu, var=var, pairs=[p[2] for p in points])


# --- the whole calibration ----------------------------------------------------------------------

def by_iso(paths: list[Path]) -> dict:
    groups: dict = {}
    for p in paths:
        groups.setdefault(frame_iso(p), []).append(p)
    return groups


def profile_dict(iso, dark: DarkFit, ptc: PTCFit) -> dict:
    """One ISO's entry of the camera JSON (the fields noise.load_camera reads, then the evidence)."""
    return {"iso": iso, "black": dark.black, "k": ptc.k, "read_scale": dark.read_scale,
            "read_lambda": dark.read_lambda, "row_sigma": dark.row_sigma,
            "read_sigma": dark.read_sigma, "quant_step": dark.quant_step, "black_file": dark.black_file,
            "ptc_intercept": ptc.v0, "ptc_read_sigma": math.sqrt(max(ptc.v0, 0.0)),
            "darks": dark.frames, "dark_exposure_s": dark.exposure_s, "flat_pairs": len(ptc.pairs)}


def check_same_camera(frames: list[RawFrame]) -> None:
    first = frames[0]
    for f in frames[1:]:
        if (f.pattern, f.white, f.bayer_u16.shape) != (first.pattern, first.white, first.bayer_u16.shape):
            raise BatmanError(f"calibrate: {f.path} ({f.pattern}, white {f.white:g}, {f.width}x{f.height}) is not from "
                              f"the camera of {first.path} ({first.pattern}, white {first.white:g}, "
                              f"{first.width}x{first.height})")


def calibrate(dark: str | Path, flat: str | Path, out: str | Path = "camera.json") -> dict:
    """Fit black, read, row and quantisation noise from `dark` and the system gain from `flat`, per ISO;
    write the camera JSON `out` and its fit plot beside it (same name, .png). Returns the JSON dict."""
    from tqdm import tqdm
    darks, flats = by_iso(raw_files(dark, "dark")), by_iso(raw_files(flat, "flat"))
    missing = [iso for iso in flats if iso not in darks]
    if missing:
        raise BatmanError(f"calibrate: flats at ISO {missing[0]} but no dark frames at that ISO in {dark}")
    out = Path(out)
    profiles, fits = [], []
    first = read_raw(next(iter(flats.values()))[0])
    for iso in tqdm(sorted(flats, key=lambda i: i or 0), desc="calibrate", unit="ISO", disable=None):
        dark_fit = fit_darks(darks[iso], first)
        ptc = fit_ptc(flats[iso], dark_fit, first)
        profiles.append(profile_dict(iso, dark_fit, ptc))
        fits.append((iso, dark_fit, ptc))
    skipped = sorted(i or 0 for i in darks if i not in flats)
    doc = {"format": CAMERA_FORMAT, "make": first.make, "model": first.model, "pattern": first.pattern,
           "white": first.white, "size": [first.height, first.width], "plot": out.with_suffix(".png").name,
           "profiles": profiles, "darks_without_flats_iso": skipped}
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    plot_fits(out.with_suffix(".png"), fits)
    for p in profiles:
        tqdm.write(f"ISO {p['iso']}: K {p['k']:.4g} DN/e-, read {p['read_sigma']:.3g} DN (Tukey lambda "
                   f"{p['read_lambda']:.3f}), row {p['row_sigma']:.3g} DN, black {[round(b, 1) for b in p['black']]}")
    tqdm.write(f"wrote {out} and {out.with_suffix('.png')}")
    return doc


def plot_fits(path: Path, fits: list) -> None:
    """One row per ISO: the photon transfer curve, the dark residuals against the fitted read noise,
    the row means against the fitted row noise."""
    from scipy import stats
    plt = pyplot()

    fig, axes = plt.subplots(len(fits), 3, figsize=(14, 3.8 * len(fits)), squeeze=False)
    for (iso, dark, ptc), (ax1, ax2, ax3) in zip(fits, axes):
        for c, name in enumerate(("R", "G1", "G2", "B")):
            ax1.plot(ptc.mu[:, c], ptc.var[:, c], "o", ms=4, color=("C3", "C2", "C8", "C0")[c], label=name)
        x = np.linspace(0, ptc.mu.max() * 1.05, 50)
        ax1.plot(x, ptc.k * x + ptc.v0, "k-", lw=1, label=f"K = {ptc.k:.4g} DN/e-")
        ax1.set(xlabel="mean signal above black (DN)", ylabel="var(D1 - D2) / 2 (DN^2)", title=f"ISO {iso}: photon transfer")
        ax1.legend(fontsize=8)
        r = dark.residuals
        edges = np.linspace(np.percentile(r, 0.05), np.percentile(r, 99.95), 80)
        ax2.hist(r, bins=edges, density=True, color="0.7", label="dark residuals")
        centres = (edges[:-1] + edges[1:]) / 2
        ax2.plot(centres, stats.tukeylambda.pdf(centres, dark.read_lambda, scale=dark.read_scale), "C3",
                 label=f"Tukey lambda {dark.read_lambda:.3f}")
        ax2.plot(centres, stats.norm.pdf(centres, scale=dark.pixel_sigma), "C0--", label=f"Gaussian {dark.pixel_sigma:.3g}")
        ax2.set(yscale="log", xlabel="DN", title="read noise (row means removed)")
        ax2.legend(fontsize=8)
        ax3.hist(dark.row_means, bins=60, density=True, color="0.7", label="row means")
        xs = np.linspace(dark.row_means.min(), dark.row_means.max(), 100)
        spread = math.sqrt(dark.row_sigma ** 2 + dark.pixel_sigma ** 2 / dark.width)  # the model's row means
        ax3.plot(xs, stats.norm.pdf(xs, scale=max(spread, 1e-9)), "C0", label=f"row sigma {dark.row_sigma:.3g} DN")
        ax3.set(xlabel="DN", title="row noise")
        ax3.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
