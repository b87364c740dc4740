"""Low-light sensor noise as small callables (ELD: Wei et al., CVPR 2020, "A physics-based noise model").

A dark frame in DN is: photon shot noise (Poisson in electrons, K DN per electron) + read noise
(Gaussian, or heavy-tailed Tukey lambda as measured on real sensors) + row banding (one offset per
sensor row) + quantisation by the ADC. Each model maps a signal above black (float DN) and a
numpy Generator to a noisier signal, so a test can switch any one of them on alone.
Noise levels come from a built-in sensor profile (sampled) or from `batman calibrate`'s camera JSON
(`load_camera`: one CalibratedProfile per ISO, its NoiseParams measured, not sampled).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from batman.config import BatmanError


# --- the noise models ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ShotNoise:
    """Photon shot noise: electrons are Poisson, DN = K * electrons (variance K * signal)."""
    k: float  # system gain, DN per electron

    def __call__(self, signal_dn: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        electrons = rng.poisson(np.maximum(signal_dn, 0.0) / self.k)
        return (electrons * self.k).astype(np.float32)


@dataclass(frozen=True)
class ReadNoise:
    """Read noise, Gaussian (lam None) or Tukey lambda of shape `lam` (heavier tails for lam < 0.14)."""
    scale: float              # DN: the Gaussian sigma, or the Tukey lambda scale
    lam: float | None = None

    def __call__(self, signal_dn: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.lam is None:
            noise = rng.standard_normal(signal_dn.shape, dtype=np.float32)
        else:
            noise = tukey_lambda_quantile(rng.random(signal_dn.shape, dtype=np.float32), self.lam)
        return signal_dn + self.scale * noise

    @property
    def variance(self) -> float:
        return self.scale ** 2 * (1.0 if self.lam is None else tukey_lambda_variance(self.lam))


@dataclass(frozen=True)
class RowNoise:
    """Row banding: one Gaussian offset per sensor row (a (H, W) mosaic, rows as the sensor reads them)."""
    sigma: float  # DN

    def __call__(self, signal_dn: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        offsets = self.sigma * rng.standard_normal((signal_dn.shape[0], 1), dtype=np.float32)
        return signal_dn + offsets


def tukey_lambda_quantile(u: np.ndarray, lam: float) -> np.ndarray:
    """The standard Tukey lambda inverse CDF at u in (0, 1); lam = 0 is the logistic."""
    u = np.clip(u, 1e-7, 1.0 - 1e-7)  # float32 has no room closer to 0 or 1
    if abs(lam) < 1e-6:
        return np.log(u / (1.0 - u))
    return (np.power(u, lam) - np.power(1.0 - u, lam)) / lam


def tukey_lambda_variance(lam: float) -> float:
    """Variance of the standard Tukey lambda distribution (finite for lam > -1/2)."""
    if abs(lam) < 1e-6:
        return math.pi ** 2 / 3.0
    return 2.0 / lam ** 2 * (1.0 / (1.0 + 2.0 * lam) - math.gamma(lam + 1) ** 2 / math.gamma(2 * lam + 2))


def quantize(dn: np.ndarray, white: float) -> np.ndarray:
    """The ADC: round to whole DN and clip to [0, white] -> uint16."""
    return np.clip(np.rint(dn), 0, white).astype(np.uint16)


# --- parameters and their sampling --------------------------------------------------------------

@dataclass(frozen=True)
class LogLinearFit:
    """log(value) = slope * log(K) + bias + N(0, sigma): how a noise level follows the system gain."""
    slope: float
    bias: float
    sigma: float

    def sample(self, log_k: float, rng: np.random.Generator) -> float:
        return float(np.exp(self.slope * log_k + self.bias + self.sigma * rng.standard_normal()))


@dataclass(frozen=True)
class SensorProfile:
    """A sensor's calibrated noise: the range of K over its ISO settings and fits against log K."""
    name: str
    k_range: tuple[float, float]        # DN per electron, lowest to highest ISO
    read: LogLinearFit                   # Tukey lambda scale (DN)
    row: LogLinearFit                    # row banding sigma (DN)
    tukey_lambda: tuple[float, float]    # read noise shape range (< 0.14: heavier tails than Gaussian)


# Fits of the size ELD reports for a 14-bit full-frame sensor (Sony A7S2-like), with ISO limited
# to the range where K stays below a few DN per electron.
SENSORS: dict[str, SensorProfile] = {
    "fullframe14": SensorProfile(
        name="fullframe14",
        k_range=(0.2, 2.5),
        read=LogLinearFit(slope=0.66, bias=1.09, sigma=0.28),
        row=LogLinearFit(slope=0.47, bias=-0.81, sigma=0.24),
        tukey_lambda=(-0.02, 0.12),
    ),
}


@dataclass(frozen=True)
class NoiseParams:
    """One frame's noise: what `noise_models` builds and what synth.json records."""
    k: float
    read_scale: float
    read_lambda: float | None
    row_sigma: float

    def to_dict(self) -> dict:
        return asdict(self)


def sample_noise_params(rng: np.random.Generator, sensor: SensorProfile = SENSORS["fullframe14"]) -> NoiseParams:
    """log K uniform over the sensor's range, the other levels from their fits with scatter."""
    log_k = rng.uniform(math.log(sensor.k_range[0]), math.log(sensor.k_range[1]))
    return NoiseParams(k=math.exp(log_k), read_scale=sensor.read.sample(log_k, rng),
                       read_lambda=float(rng.uniform(*sensor.tukey_lambda)),
                       row_sigma=sensor.row.sample(log_k, rng))


def noise_models(params: NoiseParams) -> list:
    """The callables in the order the sensor applies them: shot, read, row."""
    return [ShotNoise(params.k), ReadNoise(params.read_scale, params.read_lambda), RowNoise(params.row_sigma)]


def add_sensor_noise(mosaic_dn: np.ndarray, black: float, white: float, params: NoiseParams | None,
                     rng: np.random.Generator) -> np.ndarray:
    """(H, W) clean mosaic in DN including black -> noisy uint16 mosaic in [0, white].

    params None: no noise, only the ADC's rounding (a clean raw).
    """
    signal = np.asarray(mosaic_dn, dtype=np.float32) - np.float32(black)
    for model in noise_models(params) if params is not None else []:
        signal = model(signal, rng)
    return quantize(signal + np.float32(black), white)


# --- calibrated cameras (`batman calibrate`) ----------------------------------------------------

CAMERA_FORMAT = "batman-camera/1"


@dataclass(frozen=True)
class CalibratedProfile:
    """One ISO of a calibrated camera: its CFA, levels and measured noise (what synth --camera uses)."""
    iso: int | None
    pattern: str                              # CFA letters row-major, e.g. "RGGB"
    black: tuple[float, float, float, float]  # DN per canonical channel R, G1, G2, B
    white: float                              # DN
    noise: NoiseParams


def load_camera(path: str | Path) -> list[CalibratedProfile]:
    """The profiles (one per ISO) of a camera JSON written by `batman calibrate`; a one-line error
    names the file and what is wrong."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != CAMERA_FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, not {CAMERA_FORMAT!r}")
        profiles = [_profile(doc, p) for p in doc["profiles"]]
    except OSError as e:
        raise BatmanError(f"cannot read camera file {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:  # JSON syntax, missing or mistyped fields
        raise BatmanError(f"{path} is not a camera file from `batman calibrate` ({type(e).__name__}: {e})") from None
    if not profiles:
        raise BatmanError(f"{path} holds no calibrated ISO")
    return profiles


def _profile(doc: dict, p: dict) -> CalibratedProfile:
    noise = NoiseParams(k=float(p["k"]), read_scale=float(p["read_scale"]),
                        read_lambda=None if p["read_lambda"] is None else float(p["read_lambda"]),
                        row_sigma=float(p["row_sigma"]))
    black = tuple(float(b) for b in p["black"])
    white = float(doc["white"])
    if len(black) != 4 or not all(0 <= b < white for b in black) or noise.k <= 0 or noise.read_scale < 0 \
            or noise.row_sigma < 0 or sorted(doc["pattern"].upper()) != ["B", "G", "G", "R"]:
        raise ValueError(f"values out of range in the profile of ISO {p.get('iso')}")
    return CalibratedProfile(iso=p.get("iso"), pattern=doc["pattern"].upper(), black=black, white=white, noise=noise)
