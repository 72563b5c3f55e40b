"""CIE Lab (D50, the ICC connection space) to 8-bit sRGB by the textbook formulas, with no colour
management library: an independent expectation for what a profile conversion should give."""

from __future__ import annotations

Lab = tuple[float, float, float]
Vector = tuple[float, float, float]

D50: Vector = (0.9642, 1.0, 0.8249)
# Bradford chromatic adaptation from D50 to D65 (sRGB's white), and CIE XYZ (D65) to linear sRGB.
_BRADFORD_D50_TO_D65 = (
    (0.9555766, -0.0230393, 0.0631636),
    (-0.0282895, 1.0099416, 0.0210077),
    (0.0122982, -0.0204830, 1.3299098),
)
_XYZ_TO_LINEAR_SRGB = (
    (3.2404542, -1.5371385, -0.4985314),
    (-0.9692660, 1.8760108, 0.0415560),
    (0.0556434, -0.2040259, 1.0572252),
)


def lab_to_xyz(lab: Lab) -> Vector:
    lightness, a, b = lab
    fy = (lightness + 16) / 116

    def inverse(t: float) -> float:
        return t**3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)

    return _scale(D50, tuple(inverse(t) for t in (fy + a / 500, fy, fy - b / 200)))


def press_lab_to_srgb(lab: Lab, paper: Lab, darkest: Lab) -> tuple[int, int, int]:
    """A measured print colour as ICC relative colorimetric with black point compensation shows
    it: the paper becomes the white (XYZ scaled by D50 over the paper's XYZ), then the darkest
    black the press makes becomes sRGB black (scaled linearly between it and the white)."""
    paper_xyz = lab_to_xyz(paper)

    def relative(xyz: Vector) -> Vector:
        return tuple(
            white * value / base for white, value, base in zip(D50, xyz, paper_xyz, strict=True)
        )

    xyz, black = relative(lab_to_xyz(lab)), relative(lab_to_xyz(darkest))
    compensated = tuple(
        white * (value - low) / (white - low)
        for white, value, low in zip(D50, xyz, black, strict=True)
    )
    linear = _apply(_XYZ_TO_LINEAR_SRGB, _apply(_BRADFORD_D50_TO_D65, compensated))
    red, green, blue = (_encode(value) for value in linear)
    return red, green, blue


def _encode(linear: float) -> int:
    value = min(1.0, max(0.0, linear))  # out of sRGB's gamut: clipped, as an 8-bit transform does
    coded = 12.92 * value if value <= 0.0031308 else 1.055 * value ** (1 / 2.4) - 0.055
    return round(255 * coded)


def _scale(weights: Vector, values: tuple[float, ...]) -> Vector:
    first, second, third = (weight * value for weight, value in zip(weights, values, strict=True))
    return first, second, third


def _apply(matrix: tuple[Vector, Vector, Vector], vector: Vector) -> Vector:
    first, second, third = (sum(m * v for m, v in zip(row, vector, strict=True)) for row in matrix)
    return first, second, third
