"""The GGUI viewer (interactive, or offscreen with show_window=False)."""
from .ggui import HELP, Viewer

__all__ = ["Viewer", "HELP"]
