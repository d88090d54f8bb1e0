"""`opstylegan studio`: a local web app to invert, edit, interpolate and sample with the library's models.

Needs the optional extra (``pip install opstylegan[studio]``: Starlette + uvicorn). Layers, each usable alone:

- :mod:`opstylegan.studio.engine`: models with cached GANSpace, target preparation, rendering (torch only);
- :mod:`opstylegan.studio.jobs`: the inversion queue, one job at a time per device (no torch, no web);
- :mod:`opstylegan.studio.service`: sessions and operations (:class:`Studio`), independent of HTTP;
- :mod:`opstylegan.studio.app`: the Starlette app, its page (``static/``) and the uvicorn server.

Importing this package imports none of them.
"""

from __future__ import annotations

import importlib.util

__all__ = ["MISSING_EXTRA", "studio_available"]

MISSING_EXTRA = ("opstylegan studio needs the optional 'studio' extra (Starlette and uvicorn): "
                 "pip install 'opstylegan[studio]' (or: bash scripts/setup.sh)")


def studio_available() -> bool:
    """True when the web dependencies (starlette, uvicorn) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn", "anyio"))
