"""The PASCAL VOC colormap, colorized label maps and overlays."""

import numpy as np

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def voc_colormap(n=256):
    """n x 3 uint8: the VOC palette (bits of the label spread over R, G, B from the high bit down)."""
    cmap = np.zeros((n, 3), np.uint8)
    for label in range(n):
        c, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        cmap[label] = (r, g, b)
    return cmap


def colorize(labels):
    """H x W integer labels -> H x W x 3 uint8 RGB (255, VOC's 'ignore', is drawn as the palette has it)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be H x W, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("labels must lie in 0..255 to be drawn with the VOC palette")
    return voc_colormap()[labels.astype(np.int64)]


def overlay(image, labels, alpha=0.5):
    """Blends the colorized labels over an H x W x 3 uint8 RGB image; background stays as is."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    color = colorize(labels).astype(np.float32)
    out = image.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * color[fg]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def palette_image(labels):
    """A paletted ('P' mode) PIL image of the labels with the VOC palette."""
    from PIL import Image

    img = Image.fromarray(np.asarray(labels).astype(np.uint8), mode="P")
    img.putpalette(voc_colormap().reshape(-1).tolist())
    return img
