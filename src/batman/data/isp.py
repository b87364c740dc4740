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

# XYZ -> camera matrices of four real cameras (the set Brooks et al. sample from).
XYZ_TO_CAMS = np.array([
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.7914]],
])


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


def sample_xyz_to_cam(rng: np.random.Generator) -> np.ndarray:
    """A random XYZ -> camera matrix: a convex combination of real cameras' matrices.

    Rows are scaled so that sRGB white maps to camera (1, 1, 1): the matrix can go into a DNG
    as ColorMatrix1 and `cam_to_srgb_from_xyz` of it is the colour matrix of the synthetic camera.
    """
    weights = rng.uniform(1e-8, 1.0, size=len(XYZ_TO_CAMS))
    xyz_to_cam = np.tensordot(weights / weights.sum(), XYZ_TO_CAMS, axes=1)
    return xyz_to_cam / (xyz_to_cam @ SRGB_TO_XYZ).sum(axis=1, keepdims=True)


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
