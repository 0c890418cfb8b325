"""bioimage.io model packages: write one from a checkpoint (:mod:`.export`, needs the
``bioimage`` extra) and read mitoseg's own back for prediction (:mod:`.package`, needs only
torch and PyYAML)."""

from mitoseg.bioimage.package import (
    CONFIG_KEY,
    ModelPackageError,
    is_model_package,
    read_model_package,
)

__all__ = ["CONFIG_KEY", "ModelPackageError", "is_model_package", "read_model_package"]
