"""Open-loop video for image observations: true frames against the world model's decoded
open-loop predictions, as one PNG strip per check (``<workdir>/open_loop/step_<N>.png``).

Layout: for each of a few replayed windows, three rows over the open-loop horizon (columns are
steps ``1..T`` after the window's first, observed frame; long horizons are subsampled to at most
``max_columns`` evenly spaced steps): the true frames, the decoded predictions (the dynamics
rolled from the first state on the real actions, nothing observed after it) and
``|true - predicted|`` (per pixel, the largest channel difference, white = 1).  Steps after the
window's episode ended are drawn dark grey.  Small boards are enlarged with nearest-neighbour
pixels so every cell stays visible; boards with other than 1 or 3 channels (MinAtar's object
layers) are drawn one colour per channel.

Pillow (a matplotlib dependency) writes the PNG; nothing here runs on the device.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["display_frames", "render_strip", "save_strip", "strip_image", "to_rgb", "write_strip"]

# matplotlib's tab10, one colour per channel for boards that are not grey or RGB.
_PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    np.float32,
)
_MASKED = 48  # grey level of steps after the episode ended
_GAP = 2  # pixels between frames
_LABEL_WIDTH = 48
_HEADER = 14


def display_frames(
    true: np.ndarray, pred: np.ndarray, obs_dtype, mean=None, std=None
) -> tuple[np.ndarray, np.ndarray]:
    """True observations and decoded predictions as floats in ``[0, 1]``.

    uint8 images: the decoder works in the encoder's ``[-0.5, 0.5]`` units, so a prediction is
    ``pred + 0.5``.  Float images: predictions are un-normalised with the observation
    normaliser's ``(mean, std)`` and both are scaled by the true frames' range.
    """
    true = np.asarray(true, np.float32)
    pred = np.asarray(pred, np.float32)
    if np.dtype(obs_dtype) == np.uint8:
        return true / 255.0, np.clip(pred + 0.5, 0.0, 1.0)
    if mean is not None and std is not None:
        pred = pred * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    low, high = float(true.min()), float(true.max())
    scale = max(high - low, 1e-6)
    return (true - low) / scale, np.clip((pred - low) / scale, 0.0, 1.0)


def to_rgb(frames: np.ndarray) -> np.ndarray:
    """``[..., H, W, C]`` floats in ``[0, 1]`` -> uint8 RGB ``[..., H, W, 3]``: grey for one
    channel, as is for three, otherwise the brightest of one palette colour per channel."""
    frames = np.clip(np.asarray(frames, np.float32), 0.0, 1.0)
    channels = frames.shape[-1]
    if channels == 1:
        rgb = np.repeat(frames, 3, axis=-1) * 255.0
    elif channels == 3:
        rgb = frames * 255.0
    else:
        colours = _PALETTE[np.arange(channels) % len(_PALETTE)]  # [C, 3]
        rgb = (frames[..., :, None] * colours).max(axis=-2)
    return np.round(rgb).astype(np.uint8)


def _columns(horizon: int, max_columns: int) -> np.ndarray:
    if horizon <= max_columns:
        return np.arange(horizon)
    return np.unique(np.round(np.linspace(0, horizon - 1, max_columns)).astype(int))


def strip_image(
    true: np.ndarray,
    pred: np.ndarray,
    mask: np.ndarray,
    windows: int = 2,
    max_columns: int = 16,
) -> np.ndarray:
    """The strip as a uint8 RGB array.

    Args:
        true: ``[B, T, H, W, C]`` true frames in ``[0, 1]`` (steps ``1..T`` of each window).
        pred: ``[B, T, H, W, C]`` decoded open-loop predictions in ``[0, 1]``.
        mask: ``[B, T]``, 0 after a window's episode ended.
        windows: How many windows to show (those with the most valid steps, earliest first).
        max_columns: Horizon steps shown at most (evenly spaced, first and last included).
    """
    from PIL import Image, ImageDraw

    true, pred, mask = np.asarray(true), np.asarray(pred), np.asarray(mask)
    b, t, h, w, _ = true.shape
    order = np.argsort(-mask.sum(1), kind="stable")[: min(windows, b)]
    cols = _columns(t, max_columns)
    zoom = max(1, -(-48 // h))  # nearest-neighbour enlargement to at least 48 pixels high
    fh, fw = h * zoom, w * zoom
    rows = []
    for i in order:
        diff = np.abs(true[i] - pred[i]).max(-1, keepdims=True)
        for frames in (to_rgb(true[i]), to_rgb(pred[i]), to_rgb(diff)):
            frames = frames.repeat(zoom, axis=1).repeat(zoom, axis=2)
            frames[mask[i] <= 0] = _MASKED
            rows.append(frames[cols])
    n_rows, n_cols = len(rows), len(cols)
    height = _HEADER + n_rows * (fh + _GAP) + (len(order) - 1) * 2 * _GAP
    width = _LABEL_WIDTH + n_cols * (fw + _GAP)
    canvas = np.full((height, width, 3), 255, np.uint8)
    y, tops = _HEADER, []
    for r, frames in enumerate(rows):
        if r and r % 3 == 0:
            y += 2 * _GAP  # a wider gap between windows
        for c in range(n_cols):
            x = _LABEL_WIDTH + c * (fw + _GAP)
            canvas[y : y + fh, x : x + fw] = frames[c]
        tops.append(y)
        y += fh + _GAP
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for c, step in enumerate(cols):
        draw.text((_LABEL_WIDTH + c * (fw + _GAP) + 1, 1), f"+{step + 1}", fill=(0, 0, 0))
    for r, y in enumerate(tops):
        label = ("true", "model", "|diff|")[r % 3]
        draw.text((2, y + fh // 2 - 5), label, fill=(0, 0, 0))
    return np.asarray(image)


def render_strip(
    true_obs: np.ndarray, pred_obs: np.ndarray, mask: np.ndarray, obs_dtype, mean=None, std=None
) -> np.ndarray:
    """The strip of raw observations as a uint8 RGB array (see :func:`write_strip`)."""
    true, pred = display_frames(true_obs, pred_obs, obs_dtype, mean, std)
    return strip_image(true, pred, mask)


def save_strip(workdir: str, step: int, image: np.ndarray) -> str:
    """Writes ``image`` as ``<workdir>/open_loop/step_<step>.png``; returns the path relative
    to ``workdir``."""
    from PIL import Image

    relative = os.path.join("open_loop", f"step_{int(step)}.png")
    path = os.path.join(workdir, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)  # a reader (the report) never sees half a PNG
    return relative


def write_strip(
    workdir: str,
    step: int,
    true_obs: np.ndarray,
    pred_obs: np.ndarray,
    mask: np.ndarray,
    obs_dtype,
    mean=None,
    std=None,
) -> str:
    """Writes ``<workdir>/open_loop/step_<step>.png`` and returns its path relative to
    ``workdir``.

    Args:
        true_obs: ``[B, T, H, W, C]`` the true observations of steps ``1..T`` (raw, as stored).
        pred_obs: ``[B, T, H, W, C]`` the decoded open-loop predictions.
        mask: ``[B, T]`` valid steps.
        obs_dtype: The observations' dtype (uint8 images, or float).
        mean, std: The observation normaliser's statistics (float observations only).
    """
    image = render_strip(true_obs, pred_obs, mask, obs_dtype, mean, std)
    return save_strip(workdir, step, image)
