"""The napari plugin (``pip install 'mitoseg[napari]'``): a reader of mitoseg's OME-Zarr volumes
(:mod:`.reader`) and a dock widget that segments the current image (:mod:`.widget`, with the
non-Qt work in :mod:`.segment`). ``napari.yaml`` beside this file is the npe2 manifest.

Importing this package imports neither napari nor torch.
"""
