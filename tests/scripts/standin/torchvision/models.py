"""torchvision.models' ResNets with torchvision's exact layout (hpc.workloads.zoo)."""

from hpc.workloads.zoo import resnet18, resnet34, resnet50, resnet101  # noqa: F401
