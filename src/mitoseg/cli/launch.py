"""Console entry points that choose the memory allocator (:mod:`mitoseg.allocator`) before the
command imports PyTorch."""

from mitoseg.allocator import preload


def predict() -> None:
    """``mitoseg-predict``, with tcmalloc preloaded where the system has it."""
    preload("mitoseg-predict")
    from mitoseg.cli.predict import main

    main()


def train() -> None:
    """``mitoseg-train``, with tcmalloc preloaded where the system has it (its test phase
    predicts as ``mitoseg-predict`` does)."""
    preload("mitoseg-train")
    from mitoseg.cli.train import main

    main()
