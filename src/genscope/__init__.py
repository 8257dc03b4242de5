"""genscope: where the time, FLOPs and memory go when text-to-image and text-to-video models generate.

Layers (each imports only from the ones before it): hardware -> models -> workloads -> passes ->
instrument -> studies -> results -> report; ``cli`` is a thin front end.
Importing genscope never initializes CUDA and never reaches a model hub.
"""

from __future__ import annotations

import os

# Nothing is ever fetched from a hub: models are built from configs, weights come from local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"


def __getattr__(name: str):
    # genscope.profile(...) without importing torch/diffusers at package import time
    if name == "profile":
        from genscope.api import profile

        return profile
    raise AttributeError(f"module 'genscope' has no attribute {name!r}")
