"""Image statistics of one lesion image, with NumPy and OpenCV only (no pandas, no TensorFlow), so the
worker processes that compute them for `features` start quickly.

`image_features(image, bins)` returns, in `image_feature_names(bins)` order:
  - `moment_<channel>_<mean|std|skew>` for the 9 channels of RGB, HSV and LAB (values scaled to 0..1);
  - `hist_<channel>_<bin>`: the fraction of pixels in each of `bins` equal bins of each channel;
  - `lesion_<name>` (LESION_NAMES): from a lesion mask (`lesion_mask`), its area, border irregularity
    (perimeter squared over 4 pi area: 1 for a disc), solidity, eccentricity, shape and colour asymmetry
    under flips about its principal axes, centre distance, border sharpness, LAB colour inside against
    outside (contrast, spread of each channel, overall colour spread, variegation = the ratio of the two
    spreads), the count of coarse colours covering 5% of it, the share of the dermatoscope's black rim
    and the Otsu threshold. `lesion_found` is 0, and the lesion's values 0, when nothing stands out.
Every value is finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from melanoma.core.errors import DataError

CHANNELS = ("rgb_r", "rgb_g", "rgb_b", "hsv_h", "hsv_s", "hsv_v", "lab_l", "lab_a", "lab_b")
# OpenCV's 8-bit HSV holds hue as 0..179; every other channel is 0..255.
CHANNEL_RANGE = np.array([256, 256, 256, 180, 256, 256, 256, 256, 256], dtype=np.float64)
MOMENTS = ("mean", "std", "skew")
LESION_NAMES = ("found", "area", "irregularity", "solidity", "eccentricity", "asymmetry_major",
                "asymmetry_minor", "colour_asymmetry_major", "colour_asymmetry_minor", "centre_distance",
                "border_sharpness", "contrast_l", "contrast_a", "contrast_b", "std_l", "std_a", "std_b",
                "skin_std_l", "skin_std_a", "skin_std_b", "colour_spread", "skin_colour_spread",
                "variegation", "colours", "frame_fraction", "threshold")
FRAME_LEVEL = 35      # LAB lightness (0..255) below which border-connected pixels are the dermatoscope's rim
MIN_LESION_PIXELS = 6
COLOUR_BINS = 4       # per LAB channel, for the coarse colour count
COLOUR_SHARE = 0.05   # a coarse colour counts when it covers this share of the lesion


def image_feature_names(bins: int) -> list[str]:
    names = [f"moment_{channel}_{moment}" for channel in CHANNELS for moment in MOMENTS]
    names += [f"hist_{channel}_{index}" for channel in CHANNELS for index in range(bins)]
    return names + [f"lesion_{name}" for name in LESION_NAMES]


def decode_for_statistics(jpeg: bytes, size: int) -> np.ndarray:
    """JPEG bytes -> RGB uint8 [size, size, 3] with OpenCV (resized when the record holds another size)."""
    data = np.frombuffer(jpeg, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError("the JPEG cannot be decoded (empty or corrupt)")
    if image.shape[:2] != (size, size):
        shrink = max(image.shape[:2]) > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(image[..., ::-1])


def colour_statistics(rgb: np.ndarray, hsv: np.ndarray, lab: np.ndarray, bins: int) -> np.ndarray:
    """Mean, std and skewness of each channel, then each channel's histogram as fractions of pixels.

    Everything comes from each channel's exact 8-bit histogram (OpenCV's calcHist), which is much
    cheaper than arithmetic over every pixel and gives the same moments."""
    pixels = rgb.shape[0] * rgb.shape[1]
    moments, histograms = [], []
    for image in (rgb, hsv, lab):
        for channel in range(3):
            index = len(moments) // 3
            levels = int(CHANNEL_RANGE[index])
            counts = cv2.calcHist([image], [channel], None, [levels], [0, levels]).ravel().astype(np.float64)
            share = counts / pixels
            value = np.arange(levels) / CHANNEL_RANGE[index]
            mean = float(share @ value)
            std = math.sqrt(max(0.0, float(share @ (value - mean) ** 2)))
            third = float(share @ (value - mean) ** 3)
            moments += [mean, std, third / std ** 3 if std > 1e-6 else 0.0]
            histograms.append(np.add.reduceat(share, np.searchsorted(
                np.floor(value * bins).astype(np.int64), np.arange(bins))))
    return np.concatenate([np.array(moments), np.concatenate(histograms)])


def _kernel_size(size: int) -> int:
    """An odd kernel that grows with the image: 3 at 64 px, 5 at 128, 11 at 256."""
    return max(3, (size // 24) | 1)


@dataclass
class Segmentation:
    """What `lesion_mask` found: the lesion and the rim (bool [H, W]), the smoothed LAB image the mask
    was drawn on (float32), the skin colour it was contrasted with, and the Otsu threshold (0..1)."""

    lesion: np.ndarray
    frame: np.ndarray
    smooth: np.ndarray
    skin: np.ndarray
    threshold: float


def lesion_mask(lab: np.ndarray) -> Segmentation:
    """The lesion of a LAB uint8 image: Otsu's threshold of each pixel's colour distance from the skin.

    Thin dark hairs are closed away first; very dark pixels joined to the image border are the
    dermatoscope's rim and, with a margin, take part in nothing. The skin colour is the median of the
    pixels in the outer band of the field. A distance in colour rather than in lightness alone also
    catches blue-grey, red and whitish parts of a lesion, and cares little for vignetting. Of the
    pixels beyond the threshold, the connected component with the largest area, weighted towards the
    centre, is the lesion; its holes are filled. The mask is empty when nothing stands out.
    """
    size = lab.shape[0]
    kernel_size = _kernel_size(size)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    closed = cv2.morphologyEx(lab, cv2.MORPH_CLOSE, kernel)
    smooth = cv2.GaussianBlur(closed, (kernel_size, kernel_size), 0).astype(np.float32)

    dark = (smooth[..., 0] < FRAME_LEVEL).astype(np.uint8)
    frame = np.zeros(dark.shape, dtype=bool)
    if dark.any():
        count, labels = cv2.connectedComponents(dark, connectivity=8)
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        frame = np.isin(labels, edge[edge > 0])
    if frame.any():
        # The rim fades into the skin over a few pixels; that dim ring would pass the threshold as a
        # lesion (and, filled, as the whole field), so a margin around it is left out too.
        margin = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * max(2, size // 16) + 1,) * 2)
        frame = cv2.dilate(frame.astype(np.uint8), margin).astype(bool)
    centre = (size - 1) / 2.0
    axis = (np.arange(size) - centre) / (size / 2.0)
    radius = np.hypot(axis[None, :], axis[:, None])
    field = ~frame
    band = field & (radius > 0.6)
    reference = smooth[band] if band.sum() >= 16 else smooth[field]
    empty = np.zeros(frame.shape, dtype=bool)
    if len(reference) < MIN_LESION_PIXELS:
        return Segmentation(empty, frame, smooth, np.zeros(3, np.float32), 0.0)
    skin = np.median(reference, axis=0).astype(np.float32)
    distance = np.sqrt(((smooth - skin) ** 2).sum(axis=2))
    values = np.clip(distance[field], 0, 255).astype(np.uint8)
    if int(values.max()) - int(values.min()) < 8:
        return Segmentation(empty, frame, smooth, skin, 0.0)
    threshold, _ = cv2.threshold(values.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    candidates = ((distance > threshold) & field).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    if count < 2:
        return Segmentation(empty, frame, smooth, skin, float(threshold) / 255.0)
    # Dermoscopy centres the lesion; shading makes regions at the edges stand out instead.
    offset = np.hypot(centroids[1:, 0] - centre, centroids[1:, 1] - centre) / (size / 2.0)
    left, top = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    touches = ((left == 0) | (top == 0) | (left + stats[1:, cv2.CC_STAT_WIDTH] == size)
               | (top + stats[1:, cv2.CC_STAT_HEIGHT] == size))
    score = stats[1:, cv2.CC_STAT_AREA] * np.maximum(0.05, 1.0 - offset) * np.where(touches, 0.25, 1.0)
    chosen = (labels == 1 + int(np.argmax(score))).astype(np.uint8)
    contours, _ = cv2.findContours(chosen, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(chosen)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return Segmentation(filled.astype(bool) & field, frame, smooth, skin, float(threshold) / 255.0)


def _aligned(mask: np.ndarray, lab: np.ndarray, moments: dict) -> tuple[np.ndarray, np.ndarray]:
    """Mask and LAB image rotated so the lesion's major axis is horizontal, its centroid at the centre
    of a canvas that holds all of it, for flips about the principal axes."""
    cx, cy = moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]
    rows, columns = np.nonzero(mask)
    reach = float(np.sqrt((columns - cx) ** 2 + (rows - cy) ** 2).max())
    side = 2 * int(math.ceil(reach)) + 3
    angle = 0.5 * math.degrees(math.atan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"]))
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    matrix[0, 2] += (side - 1) / 2.0 - cx
    matrix[1, 2] += (side - 1) / 2.0 - cy
    aligned_mask = cv2.warpAffine(mask.astype(np.uint8), matrix, (side, side), flags=cv2.INTER_NEAREST) > 0
    aligned_lab = cv2.warpAffine(lab.astype(np.float32), matrix, (side, side), flags=cv2.INTER_LINEAR)
    return aligned_mask, aligned_lab


def _flip_asymmetry(mask: np.ndarray, lab: np.ndarray, axis: int) -> tuple[float, float]:
    """(shape asymmetry, colour asymmetry) under the flip along `axis`: the share of the lesion that its
    mirror image does not cover, and the mean LAB distance (0..1) between mirrored lesion pixels."""
    mirrored = np.flip(mask, axis=axis)
    shape = float(np.logical_xor(mask, mirrored).sum() / (2.0 * mask.sum()))
    both = mask & mirrored
    if not both.any():
        return shape, 0.0
    difference = lab[both] - np.flip(lab, axis=axis)[both]
    return shape, float(np.sqrt((difference ** 2).sum(axis=1)).mean() / 255.0)


def _mean_std(lab: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not mask.any():
        return np.zeros(3), np.zeros(3)
    mean, std = cv2.meanStdDev(lab, mask=mask.astype(np.uint8))
    return mean.ravel(), std.ravel()


def _spread(pixels: np.ndarray) -> float:
    """Mean distance of the pixels' LAB colours from their mean colour, 0..1."""
    if not len(pixels):
        return 0.0
    return float(np.sqrt(((pixels - pixels.mean(axis=0)) ** 2).sum(axis=1)).mean() / 255.0)


def lesion_features(lab: np.ndarray) -> np.ndarray:
    """The `lesion_*` values of a LAB uint8 image, in LESION_NAMES order."""
    found = lesion_mask(lab)
    mask, frame = found.lesion, found.frame
    pixels = mask.size
    values = dict.fromkeys(LESION_NAMES, 0.0)
    values["frame_fraction"] = float(frame.sum() / pixels)
    values["threshold"] = found.threshold
    area = int(mask.sum())
    if area < MIN_LESION_PIXELS:
        return np.array([values[name] for name in LESION_NAMES], dtype=np.float64)

    mask8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(mask8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    perimeter = cv2.arcLength(contour, True)
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    moments = cv2.moments(mask8, binaryImage=True)
    covariance = np.array([[moments["mu20"], moments["mu11"]], [moments["mu11"], moments["mu02"]]]) / area
    low, high = np.linalg.eigvalsh(covariance)
    aligned_mask, aligned_lab = _aligned(mask, lab, moments)
    shape_major, colour_major = _flip_asymmetry(aligned_mask, aligned_lab, axis=0)
    shape_minor, colour_minor = _flip_asymmetry(aligned_mask, aligned_lab, axis=1)
    size = mask.shape[0]
    centre = (size - 1) / 2.0
    cx, cy = moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]

    lightness = found.smooth[..., 0]
    gradient = np.hypot(cv2.Sobel(lightness, cv2.CV_32F, 1, 0, ksize=3),
                        cv2.Sobel(lightness, cv2.CV_32F, 0, 1, ksize=3))
    border = mask & ~cv2.erode(mask8, np.ones((3, 3), np.uint8)).astype(bool)
    skin_mask = ~mask & ~frame
    inside_mean, inside_std = _mean_std(lab, mask)
    outside_mean, outside_std = _mean_std(lab, skin_mask) if skin_mask.any() else (inside_mean, np.zeros(3))
    inside = lab[mask].astype(np.float32)
    coarse = (inside.astype(np.int64) * COLOUR_BINS) // 256
    codes = (coarse[:, 0] * COLOUR_BINS + coarse[:, 1]) * COLOUR_BINS + coarse[:, 2]
    shares = np.bincount(codes, minlength=COLOUR_BINS ** 3) / len(codes)
    spread_in, spread_out = _spread(inside), _spread(lab[skin_mask].astype(np.float32))
    contrast = (inside_mean - outside_mean) / 255.0

    values.update(
        found=1.0, area=area / pixels,
        irregularity=perimeter ** 2 / (4 * math.pi * area),
        solidity=min(1.0, area / hull_area) if hull_area > 0 else 1.0,
        eccentricity=math.sqrt(max(0.0, 1.0 - low / high)) if high > 0 else 0.0,
        asymmetry_major=shape_major, asymmetry_minor=shape_minor,
        colour_asymmetry_major=colour_major, colour_asymmetry_minor=colour_minor,
        centre_distance=math.hypot(cx - centre, cy - centre) / size,
        border_sharpness=float(gradient[border].mean() / 255.0),
        contrast_l=contrast[0], contrast_a=contrast[1], contrast_b=contrast[2],
        std_l=inside_std[0] / 255.0, std_a=inside_std[1] / 255.0, std_b=inside_std[2] / 255.0,
        skin_std_l=outside_std[0] / 255.0, skin_std_a=outside_std[1] / 255.0, skin_std_b=outside_std[2] / 255.0,
        colour_spread=spread_in, skin_colour_spread=spread_out,
        variegation=spread_in / (spread_out + 0.01),
        colours=float((shares >= COLOUR_SHARE).sum()))
    return np.array([values[name] for name in LESION_NAMES], dtype=np.float64)


def image_features(image: np.ndarray, bins: int) -> np.ndarray:
    """Every image statistic of one RGB uint8 image, in `image_feature_names(bins)` order."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    values = np.concatenate([colour_statistics(image, hsv, lab, bins), lesion_features(lab)])
    if not np.all(np.isfinite(values)):
        bad = [name for name, value in zip(image_feature_names(bins), values) if not math.isfinite(value)]
        raise ArithmeticError(f"non-finite image statistics {bad[:5]}: a bug in imagestats.py")
    return values


def features_task(task: tuple) -> np.ndarray:
    """Worker: (names, JPEG bytes, size, bins) -> [images, features]; names only for the error message."""
    names, jpegs, size, bins = task
    rows = []
    for name, jpeg in zip(names, jpegs):
        try:
            rows.append(image_features(decode_for_statistics(jpeg, size), bins))
        except DataError as error:
            raise DataError(f"image {name}: {error}") from None
    return np.stack(rows) if rows else np.zeros((0, len(image_feature_names(bins))))
