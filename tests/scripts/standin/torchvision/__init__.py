"""Stand-in for torchvision on PYTHONPATH, for Horovod's examples that import torchvision.models:
torchvision's wheel for this CPU torch does not import ("operator torchvision::nms does not exist").
Its models are hpc's copies of torchvision's layouts (same parameter counts)."""

from . import models  # noqa: F401
