"""A small progress bar for long loops (stderr; plain lines when not a terminal)."""

import sys
import time


class Progress:
    def __init__(self, total, desc="", stream=None, every=1.0, initial=0):
        """`initial`: work already done (a resumed run); the rate and the ETA
        count only what this bar sees done."""
        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.last = time.perf_counter()
        self.every = every
        self.info = ""

    def update(self, n=1, info=""):
        self.n += n
        self.info = info
        now = time.perf_counter()
        if self.n >= self.total or now - self.last >= (0.1 if self.tty else self.every):
            self.last = now
            self._draw(now)

    def _draw(self, now):
        elapsed = now - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        width = 24
        filled = int(width * self.n / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        line = f"{self.desc} [{bar}] {self.n}/{self.total} {rate:.2f}/s eta {eta:.0f}s {self.info}"
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
            if self.n >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
