"""Figures for reports: matplotlib without a display, and PNGs written atomically."""
from __future__ import annotations

import io

from melanoma.core import io_utils


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    # matplotlib takes about a second to import: only the commands that draw pay for it
    import matplotlib

    matplotlib.use("Agg")
    # matplotlib loads only when a figure is drawn
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: str) -> None:
    """Save a figure atomically (PNG bytes written to a temporary name, then renamed)."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot().close(figure)
    io_utils.write_bytes_atomic(path, buffer.getvalue())
