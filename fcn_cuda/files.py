"""Writing files safely, and the error a damaged weight file raises.

Every file the package writes (weights, checkpoints, PNGs, benchmark
results) goes through `replacing`: the bytes land in a temporary file in the
same folder, are fsynced, and only then renamed over the target, so a crash
or a full disk never leaves a half-written file in place of a good one.
"""

import contextlib
import io
import os
import tempfile
from pathlib import Path


class WeightFileError(ValueError):
    """A weight file that is corrupt, truncated, or of an unknown layout."""


@contextlib.contextmanager
def replacing(path):
    """Yields a temporary path beside `path` to write; on a clean exit the
    file is fsynced and renamed over `path`, on an error it is removed and
    `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file private: keep the replaced file's mode, or the usual 0644.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write(path, chunks):
    """Writes the byte chunks to a temp file beside `path`, then renames it over `path`."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)


def save_png(path, img):
    """Writes a PIL image as PNG, atomically."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write(path, [buf.getvalue()])
