"""The grid an image lies on, kept per case so that outputs land exactly on the input's grid."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Geometry:
    """Physical grid of an image in SimpleITK's conventions.

    Arrays everywhere in autounet are in SimpleITK/numpy order (z, y, x); `spacing`, `origin`
    and `direction` are kept exactly as SimpleITK reports them (x, y, z order, direction as
    a row-major 3x3) so that writing back is lossless. `file_dim` is 2 for files that were
    stored as 2D images (written back as 2D); `is_2d` is also true for 3D files with a
    singleton spatial axis.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    shape: tuple[int, int, int] = (1, 1, 1)
    file_dim: int = 3
    is_2d: bool = False

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array axis order (z, y, x)."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    def validate(self, where: str) -> None:
        from autounet.errors import PlansError

        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9 or len(self.shape) != 3:
            raise PlansError(f"{where}: geometry needs 3 spacings, 3 origin values, 9 direction values, 3 sizes")
        if any(s <= 0 for s in self.spacing):
            raise PlansError(f"{where}.spacing: must be positive, got {list(self.spacing)}")
