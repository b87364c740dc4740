"""A synthetic dark raw video data set in the DRV layout, from clean photos.

Per video: a clean sRGB view on the packed grid (of a photo, or of a clean raw rendered with its own colour)
-> unprocess (inverse tone, gamma, colour matrix,
white balance) -> mosaic in a random Bayer phase -> darken by the exposure ratio -> sensor noise
-> 14-bit DNG frames. The ground truth is the traditional pipeline applied to the clean packed
raw binned 2x2 in linear space, so that a perfect denoiser + gain + traditional pipeline gets it.

    short/<id>/0001.dng ...     noisy frames, ExposureTime = long exposure / ratio
    long/<id>/half0001.png      16-bit sRGB ground truth, (H/4, W/4); dynamic videos: one per frame
    long/<id>/long.dng          the clean long exposure (gain = its ExposureTime / a frame's)
    long/<id>/synth.json        everything drawn at random for the video (flat: wb, cam_to_srgb, ...)
    long/<id>/mask0001.png      dynamic videos: per frame, 8-bit on the truth's grid, bits 128 moving and
                                64 uncovered since the previous frame (batman.data.motion)
    train_list.txt val_list.txt test_list.txt dynamic_list.txt
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from fnmatch import fnmatch
from fractions import Fraction
from pathlib import Path

import numpy as np

from batman.config import BatmanError
from batman.data import motion
from batman.isp import (SRGB_TO_XYZ, cam_to_srgb_from_xyz, demosaic_average, gamma_srgb, inverse_gamma_srgb,
                        sample_wb, sample_xyz_to_cam, traditional_pipeline, unprocess)
from batman.data.noise import CalibratedProfile, NoiseParams, add_sensor_noise, load_camera, sample_noise_params
from batman.data.drv import ANY_RAW_SUFFIXES
from batman.data.raw import bin2x2, pack_bayer, read_raw, unpack_bayer, write_dng
from batman.files import atomic_path, atomic_write_text

# skimage's bundled colour photos (offline): name -> loader in skimage.data.
SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "motorcycle")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RAW_TOP = 0.9                           # a clean raw source is brightened until its 99.5th percentile reaches it
PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
WHITE = 16383                           # 14-bit sensor
BLACKS = (512, 600, 800, 1024)          # black levels of common 14-bit cameras
FRAME_EXPOSURE_S = Fraction(1, 30)      # a video frame; the long exposure is ratio times longer
CAMERA_MODES = ("one", "train", "heldout")


@dataclass(frozen=True)
class Camera:
    """What is random about one video's camera: CFA phase, levels, colour, noise, exposure ratio."""
    pattern: str
    black: int
    white: int
    wb: np.ndarray           # R, G, B gains
    xyz_to_cam: np.ndarray   # DNG ColorMatrix1
    cam_to_srgb: np.ndarray
    ratio: float             # long exposure / frame exposure, 2 decimals so EXIF holds it exactly
    noise: NoiseParams | None
    name: str = ""           # the real camera (or blend of two) whose colour matrix this is

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "black": self.black, "white": self.white, "wb": self.wb.tolist(),
                "xyz_to_cam": self.xyz_to_cam.tolist(), "cam_to_srgb": self.cam_to_srgb.tolist(),
                "ratio": self.ratio, "noise": self.noise.to_dict() if self.noise else None, "camera": self.name,
                "frame_exposure_s": float(FRAME_EXPOSURE_S), "long_exposure_s": float(self.long_exposure)}

    @property
    def long_exposure(self) -> Fraction:
        return FRAME_EXPOSURE_S * Fraction(round(self.ratio * 100), 100)


def sample_camera(rng: np.random.Generator, ratio: tuple[float, float], noise: bool,
                  xyz_to_cam: np.ndarray, name: str = "",
                  calibrated: list[CalibratedProfile] | None = None) -> Camera:
    """Draw a video's capture: ratio log-uniform in `ratio`, white balance, noise levels from the
    sensor profile; `xyz_to_cam` is the colour matrix of the camera `name`.

    Noise levels are drawn even when `noise` is off, so that a clean data set has the same
    cameras and scenes as the noisy one of the same seed. `calibrated` (from `batman calibrate`):
    one of its ISOs per video replaces the drawn noise, CFA pattern, black (channel mean) and white.
    """
    camera = Camera(pattern=PATTERNS[rng.integers(len(PATTERNS))], black=BLACKS[rng.integers(len(BLACKS))],
                    white=WHITE, wb=sample_wb(rng), xyz_to_cam=xyz_to_cam, name=name,
                    cam_to_srgb=cam_to_srgb_from_xyz(xyz_to_cam),
                    ratio=round(math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]))), 2),
                    noise=sample_noise_params(rng))
    if calibrated:
        p = calibrated[rng.integers(len(calibrated))]
        camera = replace(camera, pattern=p.pattern, black=round(float(np.mean(p.black))), white=int(p.white),
                         noise=p.noise)
    return camera if noise else replace(camera, noise=None)


# --- clean images -------------------------------------------------------------------------------

def image_sources(folders: str | Path | list | None, exclude: tuple[str, ...] = (),
                  only: tuple[str, ...] = ()) -> list[str]:
    """skimage's image names, or the sorted photo and raw paths in one or more folders and their subfolders.

    `exclude` / `only`: shell patterns on the file name (e.g. 'kodim2[0-4]*'), so that a fixed part
    of a photo set can be held out of training and used alone for evaluation.
    """
    if folders is None:
        return list(SKIMAGE_IMAGES)
    paths = []
    for folder in [folders] if isinstance(folders, (str, Path)) else folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise BatmanError(f"no such image folder: {folder}")
        paths += sorted(str(p) for p in folder.rglob("*") if is_clean_source(p) and p.is_file())
    paths = [p for p in paths if not any(fnmatch(Path(p).name, pat) for pat in exclude)
             and (not only or any(fnmatch(Path(p).name, pat) for pat in only))]
    if not paths:
        raise BatmanError(f"no images in {', '.join(map(str, [folders]))} (expected {', '.join(IMAGE_SUFFIXES)} "
                          f"or raw files"
                          f"{', after --exclude/--only' if exclude or only else ''})")
    return paths


def is_clean_source(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or is_raw_source(path)


def is_raw_source(source: str | Path) -> bool:
    return Path(source).suffix.lower() in ANY_RAW_SUFFIXES


def read_clean_image(source: str, bayer: bool = False) -> np.ndarray:
    """An skimage image name, a photo or a clean raw file -> float32 sRGB (H, W, 3) in [0, 1]; `bayer`: a photo
    as `bayer_sampled` renders it (a raw file renders so already)."""
    if is_raw_source(source):
        return render_raw_source(source)[0]
    return bayer_sampled(read_photo(source)) if bayer else read_photo(source)


def read_photo(source: str) -> np.ndarray:
    """An skimage image name or a photo file -> float32 sRGB (H, W, 3) in [0, 1]."""
    if source in SKIMAGE_IMAGES:
        import skimage.data
        image = skimage.data.stereo_motorcycle()[0] if source == "motorcycle" else getattr(skimage.data, source)()
    else:
        import imageio.v3 as iio
        try:
            image = iio.imread(source, index=0)
        except Exception as e:  # imageio raises many types for unreadable or unsupported files
            raise BatmanError(f"cannot read image: {source} ({type(e).__name__}: {e})") from None
    return to_rgb_float(image)


def bayer_sampled(srgb: np.ndarray) -> np.ndarray:
    """A photo rendered as a raw file of it renders (`render_raw_source`): each colour sampled at its own site of
    an RGGB tile of the photo's pixels, greens averaged, on the packed grid (half the size). Why: fine detail then
    aliases into colour as in real raws, whose rendered chroma carries 2-3x the high-frequency share of the
    photos' (demosaiced, chroma-subsampled); a model trained on photos alone smooths it away, on held-out real
    raws costing more than the noise it removes (docs/RESULTS.md, ninth session)."""
    linear = inverse_gamma_srgb(srgb)
    h, w = linear.shape[0] // 2 * 2, linear.shape[1] // 2 * 2
    r, b = linear[0:h:2, 0:w:2, 0], linear[1:h:2, 1:w:2, 2]
    g = 0.5 * (linear[0:h:2, 1:w:2, 1] + linear[1:h:2, 0:w:2, 1])
    return gamma_srgb(np.stack([r, g, b], axis=-1)).astype(np.float32)


@dataclass(frozen=True)
class RawColour:
    """A raw source's own colour: what the videos made from it are rendered with."""
    wb: np.ndarray           # as-shot R, G, B multipliers, G = 1
    cam_to_srgb: np.ndarray
    name: str                # make and model

    @property
    def xyz_to_cam(self) -> np.ndarray:
        """The XYZ -> camera matrix whose normalised inverse (cam_to_srgb_from_xyz) is cam_to_srgb again."""
        return np.linalg.inv(self.cam_to_srgb) @ np.linalg.inv(SRGB_TO_XYZ)


@functools.lru_cache(maxsize=2)
def render_raw_source(path: str) -> tuple[np.ndarray, RawColour]:
    """A clean raw file -> its sRGB rendering on the packed grid (H/2, W/2, 3) through the traditional pipeline
    with the file's as-shot white balance and colour matrix, brightened (never darkened) until its 99.5th
    percentile reaches RAW_TOP, and that colour. Why: unprocessed with the same colour, the video's frames are
    the camera's own linear data (greens averaged, clipped highlights aside), so a model meets a real sensor's
    colour response and a real scene's spectra instead of a photo pushed through another camera's matrix.
    A raw LibRaw has no colour matrix for stays in camera RGB (identity)."""
    frame = read_raw(path)
    packed = np.clip(pack_bayer(frame), 0.0, 1.0)
    wb = np.asarray(frame.wb, dtype=np.float64)[[0, 1, 3]]  # R, G1, B of the as-shot balance, G1 = 1
    cam_to_srgb = frame.cam_to_srgb if frame.cam_to_srgb is not None else np.eye(3)
    top = float(np.percentile(demosaic_average(packed) * wb.astype(np.float32), 99.5))
    packed = packed * np.float32(max(1.0, RAW_TOP / top) if top > 0 else 1.0)
    name = frame.model if frame.model.startswith(frame.make) else f"{frame.make} {frame.model}".strip()
    return traditional_pipeline(packed, wb, cam_to_srgb), RawColour(wb, cam_to_srgb, name or Path(path).name)


def check_raw_sources(sources: list[str]) -> None:
    """Refuse, before a file is written, a raw source that is unreadable or not Bayer (one line naming it)."""
    from batman.data.raw import read_info
    for source in filter(is_raw_source, sources):
        read_info(source)


def with_source_colour(camera: Camera, source: str) -> Camera:
    """A video made from a raw source takes that file's colour (white balance, matrix), not a drawn one."""
    if not is_raw_source(source):
        return camera
    colour = render_raw_source(source)[1]
    return replace(camera, wb=colour.wb, xyz_to_cam=colour.xyz_to_cam, cam_to_srgb=colour.cam_to_srgb,
                   name=colour.name)


def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """Any 8/16-bit or float, gray/RGB/RGBA array -> float32 (H, W, 3) in [0, 1]."""
    if np.issubdtype(image.dtype, np.integer):
        image = image.astype(np.float32) / np.iinfo(image.dtype).max
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    image = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    return np.clip(image, 0.0, 1.0)


def random_view(image: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A random (h, w) view of `image`: scaled (up when it is too small), cropped, flipped."""
    from skimage.transform import resize
    h, w = shape
    ih, iw = image.shape[:2]
    fit = max(h / ih, w / iw)
    scale = max(fit, rng.uniform(0.5, 1.0)) * rng.uniform(1.0, 1.25)
    nh, nw = max(h, math.ceil(ih * scale)), max(w, math.ceil(iw * scale))
    scaled = resize(image, (nh, nw), order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
    y, x = int(rng.integers(nh - h + 1)), int(rng.integers(nw - w + 1))
    view = scaled[y:y + h, x:x + w]
    flip_h, flip_v = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    view = view[::-1 if flip_v else 1, ::-1 if flip_h else 1]
    return np.ascontiguousarray(view), {"scale": scale, "crop": [y, x, h, w], "flip_h": flip_h, "flip_v": flip_v}


# --- scenes: one clean sRGB frame per time step -------------------------------------------------

def static_scene(sources: list[str], shape: tuple[int, int], rng: np.random.Generator,
                 bayer: bool = False) -> tuple[list, dict, str]:
    """One clean view (the frames of a static video share it), its description and its source."""
    name = sources[rng.integers(len(sources))]
    view, info = random_view(read_clean_image(name, bayer), shape, rng)
    return [view], {"image": _display_name(name), **info, "motion": None}, name


def moving_scene(sources: list[str], shape: tuple[int, int], frames: int, rng: np.random.Generator,
                 kind: str, max_speed: float, bayer: bool = False) -> tuple[list, list, dict, str]:
    """A dynamic video of one motion `kind` (batman.data.motion): its views, masks, description and the
    source of its background."""
    parts = motion.COMPONENTS[kind]
    name = sources[rng.integers(len(sources))]
    camera, canvas_size = motion.draw_camera(rng, parts, shape, frames, max_speed)
    canvas, info = random_view(read_clean_image(name, bayer), canvas_size, rng)

    def texture(size: tuple[int, int]) -> tuple[np.ndarray, str]:
        source = sources[rng.integers(len(sources))]
        return random_view(read_clean_image(source, bayer), size, rng)[0], _display_name(source)

    layers = motion.draw_objects(rng, parts, shape, max_speed, texture)
    light = motion.draw_light(rng, parts, camera, shape, frames)
    views, masks = motion.render(canvas, camera, layers, light, shape, frames)
    return views, masks, {"image": _display_name(name), **info,
                          "motion": motion.describe(kind, parts, camera, layers, light, max_speed)}, name


def _display_name(source: str) -> str:
    return source if source in SKIMAGE_IMAGES else Path(source).name


# --- rendering ----------------------------------------------------------------------------------

def ground_truth(packed: np.ndarray, camera: Camera) -> np.ndarray:
    """The truth on DRV's grid: bin the clean packed raw 2x2 in linear space, then the pipeline."""
    return traditional_pipeline(bin2x2(packed), camera.wb, camera.cam_to_srgb)


def clean_mosaic_dn(packed: np.ndarray, camera: Camera, ratio: float) -> np.ndarray:
    """Packed linear camera (4, h, w) in [0, 1] -> (2h, 2w) mosaic in DN, darkened by `ratio`."""
    scale = np.float32((camera.white - camera.black) / ratio)
    return unpack_bayer(packed, camera.pattern) * scale + np.float32(camera.black)


def write_png16(path: str | Path, rgb: np.ndarray) -> None:
    """(H, W, 3) float in [0, 1] (rounded to 1/65535), or uint16 counts as they are -> 16-bit RGB PNG,
    atomic and byte-reproducible. Encoded by libpng through imagecodecs: Pillow (behind imageio) cannot
    write 16-bit colour PNGs."""
    import imagecodecs

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_png16 expects (H, W, 3), got {rgb.shape}")
    if rgb.dtype.kind == "u" and rgb.dtype.itemsize == 2:  # counts, any byte order
        rgb16 = rgb.astype(np.uint16)
    else:
        rgb16 = np.rint(np.clip(rgb, 0.0, 1.0) * 65535).astype(np.uint16)
    png = imagecodecs.png_encode(np.ascontiguousarray(rgb16), level=6)
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(png)


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """(H, W) uint8 -> 8-bit grey PNG (libpng through imagecodecs), atomic and byte-reproducible."""
    import imagecodecs
    png = imagecodecs.png_encode(np.ascontiguousarray(mask, np.uint8), level=6)
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(png)


def write_video(root: Path, vid: str, views: list[np.ndarray], frames: int, camera: Camera,
                info: dict, rng: np.random.Generator, masks: list[np.ndarray] = ()) -> None:
    """Write one video's short frames, ground truth(s), motion masks, long exposure and synth.json."""
    long_dir, short_dir = root / "long" / vid, root / "short" / vid
    dng = {"pattern": camera.pattern, "black": camera.black, "white": camera.white,
           "wb": tuple(camera.wb), "color_matrix": camera.xyz_to_cam}
    packed = [unprocess(view, camera.wb, camera.cam_to_srgb) for view in views]
    for i, p in enumerate(packed):
        write_png16(long_dir / f"half{i + 1:04d}.png", ground_truth(p, camera))
    for i, mask in enumerate(masks):
        write_mask_png(long_dir / f"mask{i + 1:04d}.png", mask)
    long_u16 = add_sensor_noise(clean_mosaic_dn(packed[0], camera, 1.0), camera.black, camera.white, None, rng)
    write_dng(long_dir / "long.dng", long_u16, exposure_s=float(camera.long_exposure), **dng)
    for t in range(frames):
        mosaic_dn = clean_mosaic_dn(packed[min(t, len(packed) - 1)], camera, camera.ratio)
        frame = add_sensor_noise(mosaic_dn, camera.black, camera.white, camera.noise, rng)
        write_dng(short_dir / f"{t + 1:04d}.dng", frame, exposure_s=float(FRAME_EXPOSURE_S), **dng)
    meta = {"id": vid, "frames": frames, "size": [2 * views[0].shape[0], 2 * views[0].shape[1]],
            **info, **camera.to_dict()}
    atomic_write_text(long_dir / "synth.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def split_ids(ids: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Train / val / test about 4:1:1, test from 2 videos on and val from 3, train never empty."""
    n = len(ids)
    n_test = max(1, round(n / 6)) if n >= 2 else 0
    n_val = max(1, round(n / 6)) if n >= 3 else 0
    n_train = n - n_test - n_val
    return ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:]


def _check_args(videos: int, frames: int, size: tuple[int, int], seed: int, ratio: tuple[float, float]) -> None:
    h, w = size
    if videos < 0 or frames < 1:
        raise BatmanError(f"synth: need --videos >= 0 and --frames >= 1, got {videos} and {frames}")
    if h < 8 or w < 8 or h % 4 or w % 4:
        raise BatmanError(f"synth: --size {h}x{w} must be multiples of 4, at least 8x8 (truth is H/4 x W/4)")
    if seed < 0:
        raise BatmanError(f"synth: --seed must be >= 0, got {seed}")
    if not 0 < ratio[0] <= ratio[1]:
        raise BatmanError(f"synth: --ratio {ratio[0]} {ratio[1]} must satisfy 0 < LO <= HI")


def synthesize(out: str | Path, videos: int, frames: int, size: tuple[int, int], seed: int,
               images: str | Path | list | None = None, dynamic: int = 0,
               ratio: tuple[float, float] = (50.0, 300.0), noise: bool = True, cameras: str = "train",
               exclude: tuple[str, ...] = (), only: tuple[str, ...] = (), test_only: bool = False,
               camera_file: str | Path | None = None,
               motion_kinds=motion.MOTION_KINDS, max_speed: float = motion.MAX_SPEED, bayer: bool = False) -> None:
    """Write `videos` static and `dynamic` moving videos of `frames` (H, W) = `size` Bayer frames.

    cameras: `one` (one colour matrix for the whole set, like DRV's single RX100 VI), `train` (each
    video its own, drawn from real cameras) or `heldout` (each from cameras `train` never uses).
    The same seed gives byte-identical files; each video has its own seed stream, so adding
    dynamic videos leaves the static ones unchanged. noise=False writes clean (only rounded) frames.
    test_only: every static video goes into the test list (an evaluation set, e.g. of held-out photos).
    camera_file: a `batman calibrate` JSON whose sensor (noise, CFA, levels) replaces the sampled one.
    motion_kinds: the dynamic videos' kinds in turn ('pan,zoom' or a tuple, see batman.data.motion);
    max_speed: their fastest motion, pixels per frame on the model's input grid (the truth's).
    bayer: every photo as `bayer_sampled` renders it (colour aliasing like a real raw's, half the size).
    """
    from tqdm import tqdm
    _check_args(videos, frames, size, seed, ratio)
    root = Path(out)
    if cameras not in CAMERA_MODES:
        raise BatmanError(f"synth: --cameras {cameras!r}: choose one of {', '.join(CAMERA_MODES)}")
    kinds = motion.parse_kinds(motion_kinds)
    if not 0 < max_speed <= 64:
        raise BatmanError(f"synth: --max-speed {max_speed} must be in (0, 64] input-grid pixels per frame")
    sources = image_sources(images, exclude, only)
    check_raw_sources(sources)
    calibrated = load_camera(camera_file) if camera_file else None
    shape = (size[0] // 2, size[1] // 2)  # the packed grid
    static_ids = [f"{i + 1:04d}" for i in range(videos)]
    dynamic_ids = [f"M{j:04d}" for j in range(dynamic)]
    one_camera = sample_xyz_to_cam(np.random.default_rng([seed, 2])) if cameras == "one" else None
    jobs = [(vid, 0, i) for i, vid in enumerate(static_ids)] + [(vid, 1, j) for j, vid in enumerate(dynamic_ids)]
    for vid, moving, index in tqdm(jobs, desc="synth", unit="video", disable=None):
        rng = np.random.default_rng([seed, moving, index])
        camera = sample_camera(rng, ratio, noise, *(one_camera or sample_xyz_to_cam(rng, cameras)),
                               calibrated=calibrated)
        if moving:
            views, masks, info, source = moving_scene(sources, shape, frames, rng, kinds[index % len(kinds)],
                                                      max_speed, bayer)
        else:
            (views, info, source), masks = static_scene(sources, shape, rng, bayer), ()
        info = info | ({"bayer_sampled": True} if bayer and not is_raw_source(source) else {})
        write_video(root, vid, views, frames, with_source_colour(camera, source), info, rng, masks)
    for name, ids in zip(("train", "val", "test"), ([], [], static_ids) if test_only else split_ids(static_ids)):
        atomic_write_text(root / f"{name}_list.txt", "".join(f"{vid}\n" for vid in ids))
    atomic_write_text(root / "dynamic_list.txt", "".join(f"{vid}\n" for vid in dynamic_ids))
