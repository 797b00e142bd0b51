"""medseg: medical-image segmentation pipelines built on MONAI and PyTorch."""

from __future__ import annotations

import warnings

__version__ = "0.1.0"

__all__ = ["__version__"]

# MONAI builds its NvImgCodecPydicomReader with every default LoadImage and warns, in every command,
# when the optional nvImageCodec plugin is absent. medseg reads DICOM through ITK (with its own header
# checks first), never through that plugin, so the warning says nothing about what medseg does.
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")
