"""Region proposals by selective search, cached on disk.

Selective search (Uijlings et al.) over-segments the image into superpixels and
merges neighbours by colour, texture, size and fill similarity. Every region met
while merging becomes a proposal. OpenCV's ``cv2.ximgproc.segmentation`` (in the
opencv-contrib-python wheel) implements it in a fast and a quality mode.

Proposals are normalized ``[ymin, xmin, ymax, xmax]`` float32 boxes, in the
order OpenCV ranks them. They take about 0.3 s per 320 x 240 image in fast mode,
so :class:`ProposalCache` keeps them on disk, one folder per setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import cv2
import numpy as np

logger = logging.getLogger(__name__)

MODES = ("fast", "quality")


@dataclasses.dataclass(frozen=True)
class SelectiveSearchConfig:
    """Settings of the proposals; any change gives a new cache folder.

    Args:
        mode: "fast" or "quality" (more strategies, about 5 times slower).
        max_side: the image is resized so that its longer side has this many pixels
            before the search; smaller is faster and gives fewer, coarser regions.
        max_proposals: proposals kept per image, OpenCV's best first.
        min_size: smallest proposal side as a fraction of the image side.
    """

    mode: str = "fast"
    max_side: int = 320
    max_proposals: int = 1000
    min_size: float = 0.02

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Invalid selective-search mode {self.mode!r}: choose 'fast' or 'quality'.")
        if self.max_side < 32:
            raise ValueError(f"Invalid max_side {self.max_side}: use at least 32 pixels.")
        if self.max_proposals < 1:
            raise ValueError(f"Invalid max_proposals {self.max_proposals}: keep at least 1 proposal.")
        if not 0 <= self.min_size < 1:
            raise ValueError(f"Invalid min_size {self.min_size}: use a fraction of the image side in [0, 1).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Short hash of the settings and the OpenCV version, the cache folder's name."""
        text = json.dumps(self.to_dict() | {"opencv": cv2.__version__}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def check_selective_search():
    """Raise a clear error when this OpenCV has no ximgproc module (the wheel without contrib)."""
    if not hasattr(cv2, "ximgproc"):
        raise ImportError(
            f"OpenCV {cv2.__version__} has no cv2.ximgproc: selective search needs the opencv-contrib-python "
            "wheel. Install the project's pins (make install) and keep only one OpenCV wheel."
        )


def selective_search(image_bgr: np.ndarray, config: SelectiveSearchConfig = SelectiveSearchConfig()) -> np.ndarray:
    """Propose regions of one BGR uint8 image (H, W, 3); return (N, 4) normalized corners."""
    check_selective_search()
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"Invalid image shape {image_bgr.shape}: expected (H, W, 3) BGR.")
    height, width = image_bgr.shape[:2]
    scale = min(1.0, config.max_side / max(height, width))
    small = cv2.resize(image_bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else image_bgr

    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(small)
    if config.mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = np.asarray(search.process(), np.float32).reshape(-1, 4)  # x, y, w, h in pixels of `small`

    small_height, small_width = small.shape[:2]
    boxes = np.stack([
        rects[:, 1] / small_height, rects[:, 0] / small_width,
        (rects[:, 1] + rects[:, 3]) / small_height, (rects[:, 0] + rects[:, 2]) / small_width,
    ], axis=1).clip(0, 1)
    big_enough = ((boxes[:, 2] - boxes[:, 0]) >= config.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= config.min_size)
    boxes = boxes[big_enough]
    # The same region can come out of several strategies: keep its first (best-ranked) copy.
    _, first = np.unique(np.round(boxes, 4), axis=0, return_index=True)
    return boxes[np.sort(first)][: config.max_proposals].astype(np.float32)


class ProposalCache:
    """Proposals of image files, kept as ``.npy`` files under ``root/<settings key>/``.

    An entry is found by the image's absolute path, size in bytes and modification
    time, so an edited image is searched again. Other settings use another folder.
    """

    def __init__(self, root: str, config: SelectiveSearchConfig = SelectiveSearchConfig()):
        self.config = config
        self.folder = os.path.join(root, config.key())
        os.makedirs(self.folder, exist_ok=True)
        settings = os.path.join(self.folder, "settings.json")
        if not os.path.exists(settings):
            with open(settings, "w", encoding="utf-8") as f:
                json.dump(config.to_dict() | {"opencv": cv2.__version__}, f, indent=2)
        self.read = set()  # image paths whose proposals came from the cache
        self.searched = set()  # image paths searched by this object

    def _entry(self, image_path: str) -> str:
        status = os.stat(image_path)
        text = f"{os.path.abspath(image_path)}|{status.st_size}|{status.st_mtime_ns}"
        return os.path.join(self.folder, hashlib.sha1(text.encode()).hexdigest() + ".npy")

    def proposals(self, image_path: str, image_bgr: np.ndarray | None = None) -> np.ndarray:
        """Proposals of the file ``image_path`` (decoded again unless ``image_bgr`` is given)."""
        entry = self._entry(image_path)
        if os.path.exists(entry):
            if image_path not in self.searched:
                self.read.add(image_path)
            return np.load(entry)
        self.searched.add(image_path)
        if image_bgr is None:
            from dl09_keras.inference.detector import read_image_bgr

            image_bgr = read_image_bgr(image_path)
        boxes = selective_search(image_bgr, self.config)
        temporary = entry + f".{os.getpid()}.tmp.npy"
        np.save(temporary, boxes)
        os.replace(temporary, entry)
        return boxes

    def summary(self) -> str:
        """Describe how many images this object read from the cache and how many it searched."""
        return f"{len(self.read)} from the cache {self.folder}, {len(self.searched)} searched"
