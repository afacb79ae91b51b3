"""Videos (mp4, gif) through imageio-ffmpeg, and PNG frames; all written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path

__all__ = ["save_video", "save_png", "to_uint8", "VideoWriter"]


def to_uint8(img) -> np.ndarray:
    """(H, W, 3|4) float in [0, 1] or uint8 -> (H, W, 3) uint8."""
    if hasattr(img, "detach"):
        img = img.detach().cpu().numpy()
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def save_png(path: str | Path, img) -> Path:
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, to_uint8(img), extension=".png")
    return Path(path)


class VideoWriter:
    """Append frames, then ``close()`` to publish the file atomically.

    mp4 uses libx264 (yuv420p, so odd sizes are padded to even); gif uses imageio's pillow writer.
    """

    def __init__(self, path: str | Path, fps: int = 30):
        self.path = Path(path)
        self.fps = fps
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._writer = None
        self._frames: list[np.ndarray] = []
        self.count = 0

    def append(self, img) -> None:
        frame = to_uint8(img)
        if self.path.suffix.lower() != ".gif" and (frame.shape[0] % 2 or frame.shape[1] % 2):
            # yuv420p needs even sizes: pad by edge replication rather than let ffmpeg rescale
            frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
        if self.path.suffix.lower() == ".gif":
            self._frames.append(frame)
        else:
            if self._writer is None:
                import imageio

                self._writer = imageio.get_writer(self._tmp, format="FFMPEG", mode="I", fps=self.fps,
                                                  codec="libx264", macro_block_size=2,
                                                  ffmpeg_log_level="error", pixelformat="yuv420p")
            self._writer.append_data(frame)
        self.count += 1

    def close(self) -> Path:
        if self.count == 0:
            self._ctx.__exit__(ValueError, ValueError("no frames"), None)
            raise ValueError(f"no frames to write to {self.path}")
        if self._writer is not None:
            self._writer.close()
        else:
            import imageio.v3 as iio

            iio.imwrite(self._tmp, np.stack(self._frames), extension=".gif", duration=1000 / self.fps, loop=0)
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._ctx.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def save_video(path: str | Path, frames, fps: int = 30) -> Path:
    """Write a sequence of (H, W, 3) frames to .mp4 or .gif atomically."""
    with VideoWriter(path, fps) as w:
        for f in frames:
            w.append(f)
    return Path(path)
