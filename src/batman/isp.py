"""The camera colour pipeline and its exact inverse (Brooks et al., CVPR 2019, "Unprocessing images").

Forward (`traditional_pipeline`): packed linear camera R, G1, G2, B -> average greens -> white
balance -> camera-to-sRGB matrix -> clip -> sRGB gamma -> global tone curve. `unprocess` undoes
each step in reverse order, so a synthetic frame rendered without noise goes back to its ground
truth, and evaluation can use the same forward pipeline as its traditional baseline.
"""
from __future__ import annotations

import numpy as np

# Linear sRGB (D65) -> CIE XYZ.
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])

# XYZ -> camera matrices (D65, x 1/10000) of real Bayer cameras, as Adobe's DNG Converter publishes them
# (dcraw / LibRaw `adobe_coeff`). Synthetic training data draws its cameras from TRAIN_CAMERAS; the
# held-out evaluation sets use HELDOUT_CAMERAS, which training never sees, so a figure on them measures
# how well the model generalises to a camera it does not know.
TRAIN_CAMERAS: dict[str, tuple[int, ...]] = {
    "Canon EOS 5D Mark III": (6722, -635, -963, -4287, 12460, 2028, -908, 2162, 5668),
    "Canon EOS 80D": (7457, -671, -937, -4849, 12495, 2643, -1213, 2354, 5492),
    "Canon PowerShot G7 X": (9602, -3823, -937, -2984, 11495, 1675, -407, 1415, 5049),
    "Fujifilm X100": (12161, -4457, -1069, -5034, 12874, 2400, -795, 1724, 6904),
    "Nikon 1 V3": (5958, -1559, -571, -4021, 11453, 2939, -634, 1548, 5087),
    "Nikon COOLPIX A": (8198, -2239, -724, -4871, 12389, 2798, -1043, 2050, 7181),
    "Olympus E-M1": (7687, -1984, -606, -4327, 11928, 2721, -1381, 2339, 6452),
    "Olympus PEN-F": (9476, -3182, -765, -2613, 10958, 1893, -449, 1315, 5268),
    "Pentax K-3": (7415, -2052, -721, -5186, 12788, 2682, -1446, 2157, 6773),
    "Pentax K10D": (9566, -2863, -803, -7170, 15172, 2112, -818, 803, 9705),
    "Panasonic DMC-GH4": (7122, -2108, -512, -3155, 11201, 2231, -541, 1423, 5045),
    "Panasonic DMC-LX100": (8844, -3538, -768, -3709, 11762, 2200, -698, 1792, 5220),
    "Leica Q (Typ 116)": (11865, -4523, -1441, -5423, 14458, 935, -1587, 2687, 4830),
    "Sony DSC-RX100M2": (6596, -2079, -562, -4782, 13016, 1933, -970, 1581, 5181),
}
HELDOUT_CAMERAS: dict[str, tuple[int, ...]] = {
    "Canon EOS 550D": (6941, -1164, -857, -3825, 11597, 2534, -416, 1540, 6039),
    "Panasonic DMC-G7": (7610, -2780, -576, -4614, 12195, 2733, -1375, 2393, 6490),
    "Pentax K-5": (8713, -2833, -743, -4342, 11900, 2772, -722, 1543, 6247),
    "Olympus E-PL1": (11408, -4289, -1215, -4286, 12385, 2118, -387, 1467, 7787),
}
CAMERA_SETS = {"train": TRAIN_CAMERAS, "heldout": HELDOUT_CAMERAS}


def camera_xyz_to_cam(coefficients: tuple[int, ...]) -> np.ndarray:
    """Adobe's 9 integers -> the 3x3 XYZ -> camera matrix."""
    return np.asarray(coefficients, dtype=np.float64).reshape(3, 3) / 10000.0


# --- curves -------------------------------------------------------------------------------------

def gamma_srgb(linear: np.ndarray) -> np.ndarray:
    """The sRGB OETF (piecewise: linear toe, 1/2.4 power); input clipped to [0, 1]."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def inverse_gamma_srgb(srgb: np.ndarray) -> np.ndarray:
    """Inverse of `gamma_srgb`: sRGB in [0, 1] -> linear."""
    y = np.clip(srgb, 0.0, 1.0)
    return np.where(y <= 0.04045, y / 12.92, np.power((y + 0.055) / 1.055, 2.4))


def tone_curve(x: np.ndarray) -> np.ndarray:
    """Global tone curve: smoothstep 3x^2 - 2x^3 on [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def inverse_tone_curve(y: np.ndarray) -> np.ndarray:
    """Inverse smoothstep on [0, 1]: 0.5 - sin(asin(1 - 2y) / 3)."""
    y = np.clip(y, 0.0, 1.0)
    return 0.5 - np.sin(np.arcsin(1.0 - 2.0 * y) / 3.0)


# --- colour -------------------------------------------------------------------------------------

def apply_matrix(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours times a 3x3 matrix (each pixel is a column vector)."""
    return rgb @ np.asarray(matrix, dtype=rgb.dtype).T


def cam_to_srgb_from_xyz(xyz_to_cam: np.ndarray | None) -> np.ndarray:
    """Camera RGB -> linear sRGB from a file's XYZ -> camera matrix; identity when it has none.

    Takes rawpy's `rgb_xyz_matrix` convention (dcraw's cam_xyz: XYZ -> camera) and, as dcraw does, normalises the rows of sRGB -> camera to sum 1
    so that white stays white and the white balance alone sets the neutral.
    """
    if xyz_to_cam is None:
        return np.eye(3)
    m = np.asarray(xyz_to_cam, dtype=np.float64)[:3, :3]
    if m.shape != (3, 3) or not np.isfinite(m).all() or not np.abs(m).sum() > 0:
        return np.eye(3)
    srgb_to_cam = m @ SRGB_TO_XYZ
    sums = srgb_to_cam.sum(axis=1, keepdims=True)
    if np.any(np.abs(sums) < 1e-6):
        return np.eye(3)
    srgb_to_cam = srgb_to_cam / sums
    if abs(np.linalg.det(srgb_to_cam)) < 1e-8:
        return np.eye(3)
    return np.linalg.inv(srgb_to_cam)


def sample_xyz_to_cam(rng: np.random.Generator, cameras: str = "train") -> tuple[np.ndarray, str]:
    """A random XYZ -> camera matrix and its name: one real camera of the set, or (half the time) a
    convex blend of two, so that training sees colour responses between the listed cameras too.

    Rows are scaled so that sRGB white maps to camera (1, 1, 1): the matrix can go into a DNG
    as ColorMatrix1 and `cam_to_srgb_from_xyz` of it is the colour matrix of the synthetic camera.
    """
    table = CAMERA_SETS[cameras]
    names = list(table)
    first = names[rng.integers(len(names))]
    xyz_to_cam, name = camera_xyz_to_cam(table[first]), first
    if rng.random() < 0.5:
        second = names[rng.integers(len(names))]
        w = rng.uniform(0.0, 1.0)
        xyz_to_cam = (1 - w) * xyz_to_cam + w * camera_xyz_to_cam(table[second])
        name = first if second == first else f"{1 - w:.2f} {first} + {w:.2f} {second}"
    return xyz_to_cam / (xyz_to_cam @ SRGB_TO_XYZ).sum(axis=1, keepdims=True), name


def sample_wb(rng: np.random.Generator) -> np.ndarray:
    """Random white balance gains R, G, B (G = 1), in the range of daylight camera gains (Brooks)."""
    return np.array([rng.uniform(1.9, 2.4), 1.0, rng.uniform(1.5, 1.9)])


# --- Bayer --------------------------------------------------------------------------------------

def mosaic(cam_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) camera RGB -> packed (4, H, W) R, G1, G2, B: each pixel becomes one 2x2 Bayer tile."""
    r, g, b = np.moveaxis(cam_rgb, -1, 0)
    return np.stack([r, g, g, b])


def demosaic_average(packed: np.ndarray) -> np.ndarray:
    """Packed (4, H, W) R, G1, G2, B -> (H, W, 3) camera RGB on the packed grid (greens averaged)."""
    r, g1, g2, b = packed
    return np.stack([r, 0.5 * (g1 + g2), b], axis=-1)


def packed_colour_matrix(cam_to_srgb: np.ndarray) -> np.ndarray:
    """The 4x4 map of packed camera R, G1, G2, B to packed linear sRGB R', G1', G2', B'.

    Each 2x2 tile holds two camera colours, (R, G1, B) and (R, G2, B); the 3x3 matrix M of each gives
    G1' and G2', and R', B' take M's rows on the tile's mean green. Averaging G1' and G2' afterwards is
    exactly M applied to `demosaic_average`, so the packed layout (and its G1/G2 noise) survives.
    """
    m = np.asarray(cam_to_srgb, dtype=np.float64)
    return np.array([[m[0, 0], m[0, 1] / 2, m[0, 1] / 2, m[0, 2]],
                     [m[1, 0], m[1, 1], 0.0, m[1, 2]],
                     [m[1, 0], 0.0, m[1, 1], m[1, 2]],
                     [m[2, 0], m[2, 1] / 2, m[2, 1] / 2, m[2, 2]]])


# --- the two directions -------------------------------------------------------------------------

def unprocess(srgb: np.ndarray, wb: np.ndarray, cam_to_srgb: np.ndarray) -> np.ndarray:
    """sRGB (H, W, 3) in [0, 1] -> packed linear camera (4, H, W) float32 in [0, 1].

    Inverse tone curve, inverse gamma, sRGB -> camera, divide by the white balance, clip.
    Clipping only bites on colours the camera cannot hold (negative or above white).
    """
    linear = inverse_gamma_srgb(inverse_tone_curve(np.asarray(srgb, dtype=np.float64)))
    cam = apply_matrix(linear, np.linalg.inv(cam_to_srgb)) / np.asarray(wb, dtype=np.float64)
    return mosaic(np.clip(cam, 0.0, 1.0)).astype(np.float32)


def traditional_pipeline(packed: np.ndarray, wb: np.ndarray, cam_to_srgb: np.ndarray) -> np.ndarray:
    """Packed linear camera (4, H, W), black-subtracted, normalised and gained -> sRGB (H, W, 3) float32.

    Average greens, white balance, colour matrix, clip to [0, 1], sRGB gamma, tone curve:
    exactly the inverse of `unprocess` where nothing was clipped.
    """
    cam = demosaic_average(np.asarray(packed, dtype=np.float64)) * np.asarray(wb, dtype=np.float64)
    linear = np.clip(apply_matrix(cam, cam_to_srgb), 0.0, 1.0)
    return tone_curve(gamma_srgb(linear)).astype(np.float32)
