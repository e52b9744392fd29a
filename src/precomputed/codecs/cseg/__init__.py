"""The compressed_segmentation encoding: :mod:`.encode`, :mod:`.decode` (validation and
whole chunks), :mod:`.region` (planes and rows only) and :mod:`.native` (the library's
C++ decoder, called without the GIL)."""
