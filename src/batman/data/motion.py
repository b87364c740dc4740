"""Moving scenes for synthetic videos: a camera over a canvas, objects in front of it, a light, and masks.

Layers, back to front: the background canvas (layer 0) and K elliptical objects (layers 1..K, each a
patch of another photo). Layer L has, per frame t, an affine map M_{L,t} from an image pixel p = (y, x)
(packed grid, pixel centres) to its texture coordinates:

    background:  u = c_t + s_t R(theta_t) (p - o)     o: frame centre; c_t: camera centre on the canvas
                                                      (bounces off the canvas' margins), theta_t = omega t
                                                      (rotation), s_t = s_0 exp(kappa t) (zoom, bounced
                                                      in log space within ZOOM_RANGE)
    object k:    u = R(-phi_k t) (p - q_k(t)) + centre_k      q_k(t) = q_k + v_k t, bounced inside the frame

The frame is the composite I_t(p) = sum_L alpha_L(u) tex_L(u) over the layers, front over back, sampled at
sub-pixel u: cubic splines for the background, bilinear for the objects. A light switched on at frame
t_on scales the background's scene-linear intensity (before tone curve and gamma) by

    d + (1 - d) [t >= t_on] exp(-|u - l|^2 / (2 sigma^2))        a lamp fixed on the canvas at l

Speeds (pan, object velocity, and the rotation's and zoom's speed at the frame's corners) are drawn
log-uniform in [MIN_SPEED, max_speed] pixels per frame of the model's input grid (the ground truth's,
which is half the packed grid).

Masks per frame t (frame 0: none), bits of one uint8 (visible in an image viewer):
    MOVING (128):    max_c |I_t(p) - I_{t-1}(p)| > MASK_THRESHOLD: the scene changed, so an average with
                     the previous frame is wrong there;
    UNCOVERED (64):  the surface point seen at p was not visible at t-1: with V_t the visible layer
                     (front-most alpha >= 0.5) and L = V_t(p), q = M_{L,t-1}^{-1} M_{L,t} p lies outside
                     the frame or no pixel next to q shows layer L at t-1 (disocclusion, new border).
Computed on the packed grid (h, w) and max-pooled 2x2 onto the ground truth's grid (h/2, w/2).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batman.config import BatmanError

MOTION_KINDS = ("pan", "rotate", "zoom", "object", "objects", "light", "mixed")
COMPONENTS = {  # what each kind of video moves
    "pan": ("pan",), "rotate": ("rotate",), "zoom": ("zoom",), "object": ("object",),
    "objects": ("objects",), "light": ("light",), "mixed": ("pan", "rotate", "zoom", "objects", "light"),
}
MIN_SPEED = 0.25           # input-grid pixels per frame
MAX_SPEED = 16.0           # default fastest motion, input-grid pixels per frame
ZOOM_RANGE = (0.75, 1.33)  # canvas pixels per image pixel: < 1 zooms in
TRAVEL_MAX = 1.0           # camera travel before it bounces back, in frame sizes (keeps the canvas small)
OBJECT_SIZE = (1 / 6, 1 / 3)  # object height and width, fraction of the frame's
OBJECTS_MANY = (2, 4)      # objects in an `objects` video (inclusive)
LIGHT_DIM = (0.25, 0.5)    # scene-linear brightness before the light goes on (and away from it after)
MASK_THRESHOLD = 2 / 255   # sRGB change that counts as moving
MOVING, UNCOVERED = 128, 64


def parse_kinds(kinds) -> tuple[str, ...]:
    """'pan,zoom' or ('pan', 'zoom') -> validated tuple; an unknown kind is a one-line error."""
    kinds = tuple(k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds) if k.strip())
    bad = [k for k in kinds if k not in COMPONENTS]
    if bad or not kinds:
        raise BatmanError(f"synth: --motion {','.join(kinds) or '(empty)'}: choose from {','.join(MOTION_KINDS)}")
    return kinds


# --- drawing a scene ------------------------------------------------------------------------------

@dataclass
class Layer:
    """One object: texture (ph, pw, 3), centre q0 and velocity v (packed px), spin phi (rad / frame)."""
    texture: np.ndarray
    q0: np.ndarray
    velocity: np.ndarray
    spin: float
    image: str = ""


@dataclass
class Camera:
    """The camera's path over the canvas: centre c0 + v t bounced in [lo, hi], rotation, zoom."""
    c0: np.ndarray
    velocity: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    omega: float = 0.0
    kappa: float = 0.0
    zoom0: float = 1.0


@dataclass
class Light:
    centre: np.ndarray  # canvas coordinates
    sigma: float
    dim: float
    frame: int


def draw_speed(rng: np.random.Generator, max_speed: float) -> float:
    """Log-uniform speed in packed pixels per frame (twice the input grid's)."""
    lo, hi = math.log(MIN_SPEED), math.log(max(max_speed, MIN_SPEED))
    return 2.0 * math.exp(rng.uniform(lo, hi))


def draw_velocity(rng: np.random.Generator, max_speed: float) -> np.ndarray:
    speed, angle = draw_speed(rng, max_speed), rng.uniform(0, 2 * math.pi)
    return np.array([speed * math.sin(angle), speed * math.cos(angle)])


def canvas_shape(shape: tuple[int, int], frames: int, parts: tuple, velocity: np.ndarray) -> tuple:
    """Canvas (H, W) and the camera centre's range: the rotated / zoomed frame fits at every centre."""
    h, w = shape
    zoom = ZOOM_RANGE[1] if "zoom" in parts else 1.0
    if "rotate" in parts:
        half = np.full(2, math.hypot(h, w) / 2 * zoom)
    else:
        half = np.array([h / 2, w / 2]) * zoom
    travel = np.minimum(np.abs(velocity) * max(frames - 1, 0), TRAVEL_MAX * np.array([h, w]))
    size = np.ceil(2 * half + travel).astype(int) + 2
    return (int(size[0]), int(size[1])), half + 1, half + 1 + travel


def draw_camera(rng: np.random.Generator, parts: tuple, shape: tuple[int, int], frames: int,
                max_speed: float) -> tuple[Camera, tuple[int, int]]:
    h, w = shape
    velocity = draw_velocity(rng, max_speed) if "pan" in parts else np.zeros(2)
    size, lo, hi = canvas_shape(shape, frames, parts, velocity)
    corner = math.hypot(h, w) / 2  # the rotation's and zoom's speeds are set at the frame's corners
    omega = draw_speed(rng, max_speed) / corner * rng.choice([-1, 1]) if "rotate" in parts else 0.0
    kappa = draw_speed(rng, max_speed) / corner * rng.choice([-1, 1]) if "zoom" in parts else 0.0
    zoom0 = math.exp(rng.uniform(*np.log(ZOOM_RANGE))) if "zoom" in parts else 1.0
    start = np.where(velocity < 0, hi, lo)
    return Camera(start, velocity, lo, hi, float(omega), float(kappa), zoom0), size


def draw_objects(rng: np.random.Generator, parts: tuple, shape: tuple[int, int], max_speed: float,
                 textures) -> list[Layer]:
    """`object`: one translating patch; `objects`: 2-4 spinning patches, each with its own velocity."""
    if "objects" in parts:
        count, spinning = int(rng.integers(OBJECTS_MANY[0], OBJECTS_MANY[1] + 1)), True
    elif "object" in parts:
        count, spinning = 1, False
    else:
        return []
    h, w = shape
    layers = []
    for _ in range(count):
        ph = max(4, round(h * rng.uniform(*OBJECT_SIZE)))
        pw = max(4, round(w * rng.uniform(*OBJECT_SIZE)))
        texture, name = textures((ph, pw))
        q0 = np.array([rng.uniform(ph / 2, h - ph / 2), rng.uniform(pw / 2, w - pw / 2)])
        spin = draw_speed(rng, max_speed) / (max(ph, pw) / 2) * rng.choice([-1, 1]) if spinning else 0.0
        layers.append(Layer(texture, q0, draw_velocity(rng, max_speed), float(min(abs(spin), 0.2) * np.sign(spin)),
                            name))
    return layers


def draw_light(rng: np.random.Generator, parts: tuple, camera: Camera, shape: tuple[int, int],
               frames: int) -> Light | None:
    if "light" not in parts or frames < 2:
        return None
    h, w = shape
    centre = camera.c0 + rng.uniform(-0.3, 0.3, size=2) * np.array([h, w])
    frame = int(rng.integers(max(1, frames // 4), max(2, 3 * frames // 4 + 1)))
    return Light(centre, float(rng.uniform(0.3, 0.6) * min(h, w)), float(rng.uniform(*LIGHT_DIM)), frame)


# --- the maps -------------------------------------------------------------------------------------

def bounce(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflect x into [lo, hi] (a triangle wave): a path that turns back at the borders."""
    span = np.maximum(hi - lo, 1e-9)
    phase = np.mod(x - lo, 2 * span)
    return lo + np.where(phase > span, 2 * span - phase, phase)


def rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def camera_map(camera: Camera, shape: tuple[int, int], t: int) -> np.ndarray:
    """2x3 affine map image (y, x) -> canvas coordinates at frame t."""
    centre = bounce(camera.c0 + camera.velocity * t, camera.lo, camera.hi)
    lo, hi = np.log(ZOOM_RANGE)
    zoom = math.exp(float(bounce(np.array(math.log(camera.zoom0) + camera.kappa * t), lo, hi)))
    linear = zoom * rotation(camera.omega * t)
    origin = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2])
    return np.concatenate([linear, (centre - linear @ origin)[:, None]], axis=1)


def object_centre(layer: Layer, shape: tuple[int, int], t: int) -> np.ndarray:
    ph, pw = layer.texture.shape[:2]
    half = np.full(2, math.hypot(ph, pw) / 2) if layer.spin else np.array([ph / 2, pw / 2])
    lo, hi = np.minimum(half, np.array(shape) / 2), np.maximum(np.array(shape) - half, np.array(shape) / 2)
    return bounce(layer.q0 + layer.velocity * t, lo, hi)


def object_map(layer: Layer, shape: tuple[int, int], t: int) -> np.ndarray:
    """2x3 affine map image (y, x) -> texture coordinates of the object at frame t."""
    linear = rotation(-layer.spin * t)
    ph, pw = layer.texture.shape[:2]
    offset = np.array([(ph - 1) / 2, (pw - 1) / 2]) - linear @ object_centre(layer, shape, t)
    return np.concatenate([linear, offset[:, None]], axis=1)


def apply_map(matrix: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (matrix[0, 0] * yy + matrix[0, 1] * xx + matrix[0, 2],
            matrix[1, 0] * yy + matrix[1, 1] * xx + matrix[1, 2])


def compose_inverse(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """earlier^-1 o later: where the point seen at p under `later` was under `earlier`."""
    inverse = np.linalg.inv(earlier[:, :2])
    return np.concatenate([inverse @ later[:, :2], (inverse @ (later[:, 2] - earlier[:, 2]))[:, None]], axis=1)


# --- rendering ------------------------------------------------------------------------------------

def light_gain(light: Light | None, u: tuple[np.ndarray, np.ndarray], t: int) -> np.ndarray | float:
    if light is None:
        return 1.0
    on = float(t >= light.frame)
    d2 = (u[0] - light.centre[0]) ** 2 + (u[1] - light.centre[1]) ** 2
    return light.dim + (1 - light.dim) * on * np.exp(-d2 / (2 * light.sigma ** 2))


def relight(srgb: np.ndarray, gain) -> np.ndarray:
    """Scale an sRGB image's scene-linear intensity (undo tone curve and gamma, scale, redo)."""
    from batman.isp import gamma_srgb, inverse_gamma_srgb, inverse_tone_curve, tone_curve
    if np.isscalar(gain) and gain == 1.0:
        return srgb
    linear = inverse_gamma_srgb(inverse_tone_curve(srgb)) * np.asarray(gain)[..., None]
    return tone_curve(gamma_srgb(linear)).astype(np.float32)


def render_background(coeffs: list, camera: Camera, light: Light | None, shape: tuple[int, int],
                      t: int) -> np.ndarray:
    """The canvas seen by the camera at frame t: cubic-spline samples at sub-pixel positions."""
    from scipy.ndimage import map_coordinates
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    u = apply_map(camera_map(camera, shape, t), yy, xx)
    channels = [map_coordinates(c, u, order=3, mode="mirror", prefilter=False) for c in coeffs]
    return relight(np.clip(np.stack(channels, axis=-1), 0, 1).astype(np.float32), light_gain(light, u, t))


def paint_object(frame: np.ndarray, visible: np.ndarray, layer: Layer, index: int, t: int) -> None:
    """Composite one object over `frame` in place (bilinear texture, 1-pixel soft elliptical edge)."""
    from scipy.ndimage import map_coordinates
    h, w = frame.shape[:2]
    ph, pw = layer.texture.shape[:2]
    centre = object_centre(layer, (h, w), t)
    reach = math.hypot(ph, pw) / 2 + 1
    y0, y1 = max(0, int(centre[0] - reach)), min(h, int(math.ceil(centre[0] + reach)) + 1)
    x0, x1 = max(0, int(centre[1] - reach)), min(w, int(math.ceil(centre[1] + reach)) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    u = apply_map(object_map(layer, (h, w), t), yy, xx)
    radius = ((u[0] - (ph - 1) / 2) / (ph / 2)) ** 2 + ((u[1] - (pw - 1) / 2) / (pw / 2)) ** 2
    alpha = np.clip((1 - np.sqrt(radius)) * min(ph, pw) / 2 + 0.5, 0, 1).astype(np.float32)[..., None]
    texture = np.stack([map_coordinates(layer.texture[..., c], u, order=1, mode="nearest") for c in range(3)], -1)
    region = frame[y0:y1, x0:x1]
    region[:] = alpha * texture + (1 - alpha) * region
    visible[y0:y1, x0:x1][alpha[..., 0] >= 0.5] = index


def uncovered(maps: list, previous_maps: list, visible: np.ndarray, previous_visible: np.ndarray) -> np.ndarray:
    """Pixels whose surface point was out of the frame or hidden at the previous frame (see the top)."""
    h, w = visible.shape
    out = np.zeros((h, w), bool)
    for index, (now, before) in enumerate(zip(maps, previous_maps)):
        ys, xs = np.nonzero(visible == index)
        if not ys.size:
            continue
        qy, qx = apply_map(compose_inverse(now, before), ys.astype(np.float64), xs.astype(np.float64))
        inside = (qy > -0.5) & (qy < h - 0.5) & (qx > -0.5) & (qx < w - 0.5)
        seen = np.zeros(ys.shape, bool)
        for fy in (np.floor, np.ceil):
            for fx in (np.floor, np.ceil):
                iy, ix = np.clip(fy(qy), 0, h - 1).astype(int), np.clip(fx(qx), 0, w - 1).astype(int)
                seen |= previous_visible[iy, ix] == index
        out[ys, xs] = ~(inside & seen)
    return out


def pool2x2(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool on the packed grid -> (h/2, w/2): a truth pixel is set when any of its 4 is."""
    h, w = mask.shape
    return mask[:h // 2 * 2, :w // 2 * 2].reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))


def frame_mask(view: np.ndarray, previous: np.ndarray, uncovered_px: np.ndarray) -> np.ndarray:
    moving = np.abs(view - previous).max(axis=-1) > MASK_THRESHOLD
    return (pool2x2(moving).astype(np.uint8) * MOVING) | (pool2x2(uncovered_px).astype(np.uint8) * UNCOVERED)


def render(canvas: np.ndarray, camera: Camera, layers: list[Layer], light: Light | None,
           shape: tuple[int, int], frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every frame (h, w, 3) on the packed grid and its uint8 mask (h/2, w/2) (frame 0: zeros)."""
    from scipy.ndimage import spline_filter
    coeffs = [spline_filter(canvas[..., c].astype(np.float64), order=3, mode="mirror") for c in range(3)]
    views, masks, previous = [], [], None
    for t in range(frames):
        frame = render_background(coeffs, camera, light, shape, t)
        visible = np.zeros(shape, np.int8)
        for index, layer in enumerate(layers, start=1):
            paint_object(frame, visible, layer, index, t)
        maps = [camera_map(camera, shape, t)] + [object_map(layer, shape, t) for layer in layers]
        if previous is None:
            masks.append(np.zeros((shape[0] // 2, shape[1] // 2), np.uint8))
        else:
            masks.append(frame_mask(frame, views[-1], uncovered(maps, previous[0], visible, previous[1])))
        views.append(frame)
        previous = (maps, visible)
    return views, masks


def describe(kind: str, parts: tuple, camera: Camera, layers: list[Layer], light: Light | None,
             max_speed: float) -> dict:
    """The motion's parameters for synth.json (velocities in packed px / frame, angles in radians)."""
    return {"kind": kind, "components": list(parts), "max_speed_input_px": max_speed,
            "camera": {"velocity_px": np.round(camera.velocity, 4).tolist(), "omega_rad": round(camera.omega, 6),
                       "zoom_rate": round(camera.kappa, 6), "zoom0": round(camera.zoom0, 4)},
            "objects": [{"image": o.image, "size_px": list(o.texture.shape[:2]),
                         "velocity_px": np.round(o.velocity, 4).tolist(), "spin_rad": round(o.spin, 6)}
                        for o in layers],
            "light": None if light is None else {"frame": light.frame, "dim": round(light.dim, 4),
                                                 "sigma_px": round(light.sigma, 2)},
            "masks": "mask%04d.png", "mask_bits": {"moving": MOVING, "uncovered": UNCOVERED}}


# --- reading the masks back -----------------------------------------------------------------------

def mask_path(target: Path) -> Path:
    """long/<id>/half0007.png -> long/<id>/mask0007.png (frames left out keep their own masks)."""
    return target.with_name(target.name.replace("half", "mask", 1))


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as image:
            return np.asarray(image, dtype=np.uint8)
    except Exception as e:  # PIL raises many types for broken files
        raise BatmanError(f"cannot read motion mask {path} ({type(e).__name__}: {e})") from None


def iter_masks(video, n_frames: int) -> Iterator[np.ndarray | None]:
    """The uint8 masks of a video's first n frames, or None for each frame when it has none (static
    videos, DRV, synthetic data written before masks existed)."""
    paths = [mask_path(Path(t)) for t in video.targets[:n_frames]] if len(video.targets) > 1 else []
    if not paths or not all(p.is_file() for p in paths):
        return itertools.repeat(None, n_frames)
    return (read_mask(p) for p in paths)
