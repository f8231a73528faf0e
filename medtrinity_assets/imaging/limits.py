"""One bound on what a file may make any decoder allocate, checked from its header first.

Compression makes declared size and file size unrelated: a 456 KB LZW TIFF can declare
20000x20000 pixels (a 400 MB array), a DICOM header 100000 frames. So every decoder (Pillow and
tifffile in ``image_io``, pydicom via the dicom reader, nibabel via the NIfTI reader) reads the
size the header declares and calls these checks before any pixel is decoded; readers quarantine
``TooLarge`` as kind "too_large". The spec's ``limits`` (catalog.spec.Limits) sets the values.
"""

from __future__ import annotations

from dataclasses import dataclass

# One 2D image, frame or slice plane: 10000 x 10000, past the largest radiograph or
# pathology tile the 2D sources ship (whole-slide pyramids are not read as one image).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
# Frames of a multi-frame file or slices of a volume: a whole-body CT has about 2000.
DEFAULT_MAX_FRAMES = 10_000
# All pixels of one multi-frame file or volume: what a label volume, read whole, can take
# (1 G voxels, 1-4 GB); a 512 x 512 x 2000 CT has 0.5 G.
DEFAULT_MAX_VOLUME_VOXELS = 1_000_000_000


class TooLarge(ValueError):
    """A header declares more pixels, frames or voxels than the limit; nothing was decoded."""


@dataclass(frozen=True)
class PixelLimits:
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES
    max_volume_voxels: int = DEFAULT_MAX_VOLUME_VOXELS

    def check_image(self, height: int, width: int, what: str = "image") -> None:
        pixels = int(height) * int(width)
        if pixels > self.max_image_pixels:
            raise TooLarge(
                f"{what} declares {int(width)}x{int(height)} = {pixels:,} pixels, over the limit of "
                f"{self.max_image_pixels:,} (limits.max_image_pixels); not decoded"
            )

    def check_volume(self, height: int, width: int, frames: int, what: str = "volume", unit: str = "frames") -> None:
        """A stack of ``frames`` planes of ``height`` x ``width``: each plane, the count, the total."""
        self.check_image(height, width, f"{what} plane" if frames > 1 else what)
        if int(frames) > self.max_frames:
            raise TooLarge(f"{what} declares {int(frames):,} {unit}, over the limit of {self.max_frames:,} (limits.max_frames); not decoded")
        voxels = int(height) * int(width) * int(frames)
        if voxels > self.max_volume_voxels:
            raise TooLarge(
                f"{what} declares {int(width)}x{int(height)}x{int(frames)} = {voxels:,} voxels, over the limit of "
                f"{self.max_volume_voxels:,} (limits.max_volume_voxels); not decoded"
            )
