"""Console entry points that choose the memory allocator (:mod:`mitoseg.allocator`) before the
command imports PyTorch."""

from mitoseg.allocator import preload


def predict() -> None:
    """``mitoseg-predict``, with tcmalloc preloaded where the system has it."""
    preload("mitoseg-predict")
    from mitoseg.cli.predict import main

    main()
