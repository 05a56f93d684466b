"""The geo grid: 1° cells, their k-ary sub-cells, a never-missing cover and an exact near: index."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

from geopy.distance import ELLIPSOIDS, geodesic

from msd.errors import MsdError

ROWS = 180
COLS = 360
K = 2
DEPTH = 5
# Longest geodesic on WGS-84 (pole to pole along a meridian) is 20 003.93 km; a radius at or
# beyond this reaches every point, so the cover is simply every cell.
MAX_DISTANCE_KM = 20_004.0

# One ellipsoid for the bounds and for the distance, taken from geopy so the two never drift.
_A_KM: float = float(ELLIPSOIDS["WGS-84"][0])
_F: float = float(ELLIPSOIDS["WGS-84"][2])
_E2 = _F * (2.0 - _F)
# Meridional radius of curvature is smallest at the equator: a(1 − e²). No path between two
# latitudes is shorter than this radius times their difference (ds ≥ M·|dφ|).
_M_MIN_KM = _A_KM * (1.0 - _E2)
# Slack so float rounding in the bounds (~1e-15 relative) and geographiclib's ~15 nm error can
# never push a point that is within the radius outside the cover: 1 mm plus one part in 1e9.
_SLACK_KM = 1e-6
_SLACK_REL = 1e-9
_SLACK_DEG = 1e-9
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_MAX_K = 6  # k² children per level must fit one digit of _DIGITS
_MAX_FINE = 1 << 40  # k**depth sub-rows per degree: beyond this a float latitude has no bits left

_GEODESIC = geodesic(ellipsoid="WGS-84")

KeyT = TypeVar("KeyT", bound=Hashable)


class GeoError(MsdError):
    """A coordinate, radius, subdivision or cell key broke a rule of the geo grid."""


class InvalidCoordinateError(GeoError):
    """Latitude must be a finite number in [−90, 90] and longitude one in [−180, 180]."""


class InvalidRadiusError(GeoError):
    """A search radius must be a finite, non-negative number of kilometres."""


class InvalidSubdivisionError(GeoError):
    """The sub-cell tree needs 2 ≤ k ≤ 6 and depth ≥ 0 with k**depth ≤ 2**40."""


class InvalidCellKeyError(GeoError):
    """A cell key is 'row,col' (0 ≤ row < 180, 0 ≤ col < 360), a sub-cell key adds '/path'."""


class UnknownGeoKeyError(GeoError):
    """The geo index holds no point under this key."""


def _number(value: object, what: str) -> float:
    # bool is an int subclass; True as a latitude is always a bug upstream.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidCoordinateError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidCoordinateError(f"{what} must be finite, got {value!r}")
    return number


def check_point(lat: float, lon: float) -> tuple[float, float]:
    """The point as floats, or InvalidCoordinateError naming the coordinate out of range."""
    la = _number(lat, "latitude")
    lo = _number(lon, "longitude")
    if not -90.0 <= la <= 90.0:
        raise InvalidCoordinateError(f"latitude must be in [-90, 90] degrees, got {lat!r}")
    if not -180.0 <= lo <= 180.0:
        raise InvalidCoordinateError(f"longitude must be in [-180, 180] degrees, got {lon!r}")
    return la, lo


def _check_radius(km: float) -> float:
    if isinstance(km, bool) or not isinstance(km, int | float) or not math.isfinite(km):
        raise InvalidRadiusError(f"radius must be a finite number of km, got {km!r}")
    if km < 0:
        raise InvalidRadiusError(f"radius must be >= 0 km, got {km!r}")
    return float(km)


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Geodesic distance on WGS-84 in km (geopy's, via geographiclib): the one exact distance."""
    return float(_GEODESIC.measure(check_point(lat1, lon1), check_point(lat2, lon2)))


# Rows and columns come from the same two expressions for points and for cover bounds; float
# rounding is monotone, so a point inside a bound never lands in a cell outside it.
def _row(lat: float) -> int:
    return min(ROWS - 1, math.floor(lat + 90.0))  # lat = 90 joins the top row


def _col(lon: float) -> int:
    return math.floor(lon + 180.0) % COLS  # lon = 180 is lon = −180: column 0


class Cell(NamedTuple):
    """One 1° cell: row 0 starts at latitude −90, column 0 at longitude −180."""

    row: int
    col: int

    @property
    def key(self) -> str:
        """The cell's SQL-indexable key, 'row,col'."""
        return f"{self.row},{self.col}"


def cell_of(lat: float, lon: float) -> Cell:
    """The 1° cell holding the point (lat 90 → row 179; lon ±180 → column 0)."""
    la, lo = check_point(lat, lon)
    return Cell(_row(la), _col(lo))


def cell_key(lat: float, lon: float) -> str:
    """The 'row,col' key of the point's 1° cell."""
    return cell_of(lat, lon).key


def parse_cell_key(key: str) -> Cell:
    """The cell named by a 'row,col' key."""
    parts = key.split(",") if isinstance(key, str) else []
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise InvalidCellKeyError(f"a cell key is 'row,col' in decimal, got {key!r}")
    row, col = int(parts[0]), int(parts[1])
    if not (0 <= row < ROWS and 0 <= col < COLS):
        raise InvalidCellKeyError(f"cell key {key!r} is outside 0 <= row < 180, 0 <= col < 360")
    return Cell(row, col)


def _check_tree(k: int, depth: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= _MAX_K:
        raise InvalidSubdivisionError(f"k must be an integer in [2, {_MAX_K}], got {k!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise InvalidSubdivisionError(f"depth must be an integer >= 0, got {depth!r}")
    if k**depth > _MAX_FINE:
        raise InvalidSubdivisionError(f"k**depth must be <= 2**40, got {k}**{depth}")
    return int(k**depth)


@dataclass(frozen=True, slots=True)
class SubCell:
    """A leaf of a 1° cell's k-ary tree: each level halves (for k = 2) both axes.

    Each path digit is ``k·dy + dx`` (base k², 0-9a-z), ``dy`` counting northward and ``dx``
    eastward; for k = 2 that is 0 SW, 1 SE, 2 NW, 3 NE.
    """

    row: int
    col: int
    path: str
    k: int = K

    @property
    def cell(self) -> Cell:
        """The 1° cell this sub-cell lies in."""
        return Cell(self.row, self.col)

    @property
    def key(self) -> str:
        """'row,col/path': an ancestor's key is a prefix of its descendants' (SQL LIKE 'x/01%')."""
        return f"{self.row},{self.col}/{self.path}"

    def bounds(self) -> tuple[float, float, float, float]:
        """(south, west, north, east) in degrees."""
        fy = fx = 0
        for ch in self.path:
            digit = _DIGITS.index(ch)
            fy, fx = fy * self.k + digit // self.k, fx * self.k + digit % self.k
        size = 1.0 / self.k ** len(self.path)
        south, west = self.row - 90 + fy * size, self.col - 180 + fx * size
        return south, west, south + size, west + size


def subcell_of(lat: float, lon: float, *, k: int = K, depth: int = DEPTH) -> SubCell:
    """The depth-level sub-cell of the point's 1° cell (k = 2, depth 5: 1/32°, ≈ 3.5 km)."""
    n = _check_tree(k, depth)
    la, lo = check_point(lat, lon)
    row, col = _row(la), _col(lo)
    # The offsets inside the cell come from the very sums that chose the cell, so a
    # longitude that rounds up to 180 (lon + 180 == 360.0) sits at column 0's west edge,
    # as lon = 180 does. Clamped: lat 90 joins the top row.
    y, x = la + 90.0, lo + 180.0
    fy = min(n - 1, max(0, math.floor((y - row) * n)))
    fx = min(n - 1, max(0, math.floor((x - math.floor(x)) * n)))
    digits = []
    for level in range(depth - 1, -1, -1):
        step = k**level
        digits.append(_DIGITS[(fy // step % k) * k + fx // step % k])
    return SubCell(row, col, "".join(digits), k)


def subcell_key(lat: float, lon: float, *, k: int = K, depth: int = DEPTH) -> str:
    """The 'row,col/path' key of the point's sub-cell."""
    return subcell_of(lat, lon, k=k, depth=depth).key


def parse_subcell_key(key: str, *, k: int = K) -> SubCell:
    """The sub-cell named by a 'row,col/path' key of a k-ary tree."""
    _check_tree(k, 0)
    head, slash, path = key.partition("/") if isinstance(key, str) else ("", "", "")
    if not slash or any(ch not in _DIGITS[: k * k] for ch in path):
        raise InvalidCellKeyError(f"a sub-cell key is 'row,col/path' with base-{k * k} digits")
    cell = parse_cell_key(head)
    _check_tree(k, len(path))
    return SubCell(cell.row, cell.col, path, k)


def _parallel_radius_km(lat: float) -> float:
    phi = math.radians(lat)
    return _A_KM * math.cos(phi) / math.sqrt(1.0 - _E2 * math.sin(phi) ** 2)


@dataclass(frozen=True, slots=True)
class Cover:
    """The 1° cells that can hold a point within a radius: rows × column ranges.

    Two column ranges when the cover wraps at ±180°. Iterating yields :class:`Cell`;
    :meth:`keys` yields their 'row,col' keys; ``everything`` says "no cell filter at all".
    A store with integer row/col columns can also use the ranges as BETWEEN bounds.
    """

    rows: range
    cols: tuple[range, ...]

    @property
    def everything(self) -> bool:
        """True when the cover is the whole grid."""
        return len(self) == ROWS * COLS

    def __len__(self) -> int:
        return len(self.rows) * sum(len(c) for c in self.cols)

    def __iter__(self) -> Iterator[Cell]:
        for row in self.rows:
            for cols in self.cols:
                for col in cols:
                    yield Cell(row, col)

    def __contains__(self, cell: object) -> bool:
        if not isinstance(cell, tuple) or len(cell) != 2:
            return False
        return cell[0] in self.rows and any(cell[1] in cols for cols in self.cols)

    def keys(self) -> Iterator[str]:
        """The 'row,col' keys of the covered cells."""
        return (cell.key for cell in self)


_ALL_COLS = (range(COLS),)
_EVERYTHING = Cover(range(ROWS), _ALL_COLS)


def _reach(km: float) -> float:
    return _check_radius(km) * (1.0 + _SLACK_REL) + _SLACK_KM


def _cover(lat: float, lon: float, reach: float) -> Cover:
    if reach >= MAX_DISTANCE_KM:
        return _EVERYTHING
    # No path is shorter than M_min times its change of latitude, so every point within reach
    # (and every point of the path to it) lies within this band.
    dlat = math.degrees(reach / _M_MIN_KM) + _SLACK_DEG
    south, north = lat - dlat, lat + dlat
    rows = range(_row(max(-90.0, south)), _row(min(90.0, north)) + 1)
    if south <= -90.0 or north >= 90.0:
        # A pole is within reach: every longitude is, too (the path may go over the pole).
        return Cover(rows, _ALL_COLS)
    # Inside the band a path covers at least its narrowest parallel radius per radian of
    # longitude, and the narrowest parallel is at the band's more polar edge.
    dlon = math.degrees(reach / _parallel_radius_km(max(-south, north))) + _SLACK_DEG
    first, last = math.floor(lon - dlon + 180.0), math.floor(lon + dlon + 180.0)
    if dlon >= 180.0 or last - first + 1 >= COLS:
        return Cover(rows, _ALL_COLS)
    if first < 0:
        return Cover(rows, (range(first + COLS, COLS), range(0, last + 1)))
    if last >= COLS:
        return Cover(rows, (range(first, COLS), range(0, last - COLS + 1)))
    return Cover(rows, (range(first, last + 1),))


def cells_within(lat: float, lon: float, km: float) -> Cover:
    """Every 1° cell that can hold a point within km (geodesic) of (lat, lon); never misses one.

    A lat/lon box from the meridian and parallel radii of WGS-84, widened to all longitudes
    when a pole is in reach and wrapped at ±180°. At most 180 × 360 cells; ``everything``
    from 20 004 km up.
    """
    la, lo = check_point(lat, lon)
    return _cover(la, lo, _reach(km))


def _ecef(lat: float, lon: float) -> tuple[float, float, float]:
    """Earth-centred Cartesian coordinates in km, for the chord lower bound."""
    phi, lam = math.radians(lat), math.radians(lon)
    n = _A_KM / math.sqrt(1.0 - _E2 * math.sin(phi) ** 2)
    across = n * math.cos(phi)
    return across * math.cos(lam), across * math.sin(lam), n * (1.0 - _E2) * math.sin(phi)


# --- sub-cell covers and the exact circle ----------------------------------------------------

PREFIX_BUDGET = 256  # key prefixes one sub-cell cover may use (a store turns each into a range)


class _Fit(Enum):
    OUT = "out"  # no point of the box can be within reach
    PART = "part"  # some may be: splitting the box may drop some of its children
    IN = "in"  # every point passes the bound: splitting cannot drop anything


def _wrapped(dlon: float) -> float:
    return abs((dlon + 180.0) % 360.0 - 180.0)


def _lon_gaps(lon: float, west: float, east: float) -> tuple[float, float]:
    """Least and greatest wrapped longitude difference (≤ 180°) from lon to [west, east]."""
    width = east - west
    off = (lon - west) % 360.0
    least = 0.0 if off <= width else min(off - width, 360.0 - off)
    if (lon + 180.0 - west) % 360.0 <= width:
        return least, 180.0  # the opposite meridian crosses the box
    return least, max(_wrapped(lon - west), _wrapped(lon - east))


class _Box(NamedTuple):
    prefix: str
    south: float
    west: float
    size: float  # degrees, both ways
    fit: _Fit


class _LowerBound:
    """A lower bound on the geodesic distance from the centre to any point of a lat/lon box.

    The shortest path to a point within reach stays in the cover's latitude band, where the
    meridional radius is ≥ M_min and the parallel radius ≥ p_min (0 once the band reaches a
    pole). There ds² = M²dφ² + p²dλ² ≥ (M_min·dφ)² + (p_min·dλ)², and the length of a path in
    that constant metric is at least the straight line's: √((M_min·Δφ)² + (p_min·Δλ)²), with
    Δλ the wrapped longitude difference. An ellipse, then, inside the cover's rectangle.
    """

    __slots__ = ("_lat", "_lon", "_m", "_p", "_reach2")

    def __init__(self, lat: float, lon: float, reach: float) -> None:
        self._lat, self._lon, self._reach2 = lat, lon, reach * reach
        dlat = math.degrees(reach / _M_MIN_KM) + _SLACK_DEG
        south, north = lat - dlat, lat + dlat
        polar = south <= -90.0 or north >= 90.0
        self._m = math.radians(_M_MIN_KM)  # km per degree
        self._p = 0.0 if polar else math.radians(_parallel_radius_km(max(-south, north)))

    def fit(self, south: float, west: float, north: float, east: float) -> _Fit:
        # Widened like the cover's bounds, so a point a rounding error outside its box counts.
        south, west = south - _SLACK_DEG, west - _SLACK_DEG
        north, east = north + _SLACK_DEG, east + _SLACK_DEG
        lat_least = max(0.0, south - self._lat, self._lat - north)
        lon_least, lon_most = _lon_gaps(self._lon, west, east)
        if (self._m * lat_least) ** 2 + (self._p * lon_least) ** 2 > self._reach2:
            return _Fit.OUT
        lat_most = max(abs(south - self._lat), abs(north - self._lat))
        if (self._m * lat_most) ** 2 + (self._p * lon_most) ** 2 <= self._reach2:
            return _Fit.IN
        return _Fit.PART


class Circle:
    """A near: query's circle on WGS-84: its cells, its key prefixes and the exact test.

    ``distance(lat, lon)`` is the geodesic distance when it is ≤ km (the boundary is inside),
    else None; the straight chord between the Earth-centred positions, never longer than the
    geodesic, rejects most outsiders before the ~50 µs geodesic is computed.
    """

    __slots__ = ("_reach", "_xyz", "km", "lat", "lon")

    def __init__(self, lat: float, lon: float, km: float) -> None:
        self.lat, self.lon = check_point(lat, lon)
        self.km = _check_radius(km)
        self._reach = _reach(self.km)
        self._xyz = _ecef(self.lat, self.lon)

    def __repr__(self) -> str:
        return f"Circle(lat={self.lat}, lon={self.lon}, km={self.km})"

    def cover(self) -> Cover:
        """The 1° cells that can hold a point of the circle (as :func:`cells_within`)."""
        return _cover(self.lat, self.lon, self._reach)

    def distance(self, lat: float, lon: float) -> float | None:
        """The geodesic distance in km from the centre if it is ≤ km, else None."""
        point = check_point(lat, lon)
        x, y, z = _ecef(*point)
        cx, cy, cz = self._xyz
        if (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 > self._reach * self._reach:
            return None
        d = float(_GEODESIC.measure((self.lat, self.lon), point))
        return d if d <= self.km else None

    def prefixes(
        self, *, k: int = K, depth: int = DEPTH, budget: int = PREFIX_BUDGET
    ) -> tuple[str, ...] | None:
        """Sorted key prefixes such that every point of the circle has a sub-cell key (of a k-ary
        tree of that depth) starting with one of them; None means "every key".

        A prefix is 'row,' (a whole row of 1° cells), 'row,col/' (a 1° cell) or
        'row,col/path' (a sub-cell); they are disjoint. The 1° cells of :meth:`cover` that
        the lower bound of :class:`_LowerBound` cannot rule out are split level by level,
        dropping the children it rules out, while at most ``budget`` prefixes result and
        the tree is not deeper than ``depth``. A cover of more than 4 × budget cells, or
        whose remaining cells exceed the budget, gives its rows instead.
        """
        _check_tree(k, depth)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise GeoError(f"the prefix budget must be a positive integer, got {budget!r}")
        cover = self.cover()
        if cover.everything:
            return None
        rows = [f"{row}," for row in cover.rows]
        if len(cover) > 4 * budget:
            return tuple(sorted(rows)) if len(rows) <= budget else None
        bound = _LowerBound(self.lat, self.lon, self._reach)
        kept: dict[int, list[_Box]] = {}
        for row, col in cover:
            south, west = row - 90.0, col - 180.0
            fit = bound.fit(south, west, south + 1.0, west + 1.0)
            if fit is not _Fit.OUT:
                kept.setdefault(row, []).append(_Box(f"{row},{col}/", south, west, 1.0, fit))
        if sum(len(cells) for cells in kept.values()) > budget:
            rows = [f"{row}," for row in kept]
            return tuple(sorted(rows)) if len(rows) <= budget else None
        final: list[str] = []
        frontier: list[_Box] = []
        for row, cells in kept.items():
            if len(cells) == COLS:
                final.append(f"{row},")  # one range instead of 360
                continue
            for box in cells:
                if box.fit is _Fit.PART:
                    frontier.append(box)
                else:
                    final.append(box.prefix)
        for _level in range(depth):
            if not frontier:
                break
            children: list[_Box] = []
            for box in frontier:
                step = box.size / k
                for dy in range(k):  # digit k·dy + dx, dy northward: as subcell_of numbers them
                    for dx in range(k):
                        s, w = box.south + dy * step, box.west + dx * step
                        fit = bound.fit(s, w, s + step, w + step)
                        if fit is not _Fit.OUT:
                            children.append(_Box(box.prefix + _DIGITS[dy * k + dx], s, w, step,
                                                 fit))
            if len(final) + len(children) > budget:
                break
            final += [child.prefix for child in children if child.fit is _Fit.IN]
            frontier = [child for child in children if child.fit is _Fit.PART]
        final += [box.prefix for box in frontier]
        return tuple(sorted(final))


def prefixes_within(
    lat: float, lon: float, km: float, *, k: int = K, depth: int = DEPTH,
    budget: int = PREFIX_BUDGET,
) -> tuple[str, ...] | None:
    """Key prefixes holding every sub-cell key within km of (lat, lon); None: every key.

    See :meth:`Circle.prefixes`: never misses a point, ≤ budget prefixes, disjoint.
    """
    return Circle(lat, lon, km).prefixes(k=k, depth=depth, budget=budget)


_Point = tuple[float, float, float, float, float]  # lat, lon, x, y, z


class GeoIndex(Generic[KeyT]):
    """An in-memory sparse index of points by 1° cell, answering exact near: queries.

    ``near`` costs O(min(cells in the cover, occupied cells)) to pick cells, one chord length
    per point in them, and one geodesic (~60 µs) per point whose chord is within the radius:
    the matches plus a rim of relative width ≈ (km / 2R)² / 6. ``add`` and ``remove`` are O(1).
    """

    def __init__(self) -> None:
        self._cells: dict[Cell, dict[KeyT, _Point]] = {}
        self._where: dict[KeyT, Cell] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __repr__(self) -> str:
        return f"GeoIndex(points={len(self._where)}, cells={len(self._cells)})"

    def add(self, key: KeyT, lat: float, lon: float) -> None:
        """Index the point under key, replacing any point the key had."""
        point = check_point(lat, lon)  # before anything changes
        cell = Cell(_row(point[0]), _col(point[1]))
        if key in self._where:
            self.remove(key)
        self._cells.setdefault(cell, {})[key] = (*point, *_ecef(*point))
        self._where[key] = cell

    def remove(self, key: KeyT) -> None:
        """Forget the key's point; UnknownGeoKeyError if there is none."""
        cell = self._where.pop(key, None)
        if cell is None:
            raise UnknownGeoKeyError(f"no point is indexed under {key!r}")
        points = self._cells[cell]
        del points[key]
        if not points:
            del self._cells[cell]  # stay sparse

    def near(self, lat: float, lon: float, km: float) -> list[tuple[KeyT, float]]:
        """Exactly the (key, distance_km) whose geodesic distance is ≤ km, nearest first."""
        centre = check_point(lat, lon)
        reach = _reach(km)
        cover = _cover(*centre, reach)
        if len(cover) <= len(self._cells):
            buckets = [self._cells[c] for c in cover if c in self._cells]
        else:
            buckets = [points for c, points in self._cells.items() if c in cover]
        cx, cy, cz = _ecef(*centre)
        # The straight chord is never longer than the geodesic: a cheap, exact-safe prefilter.
        chord2 = reach * reach
        found: list[tuple[KeyT, float]] = []
        for points in buckets:
            for key, (plat, plon, x, y, z) in points.items():
                if (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= chord2:
                    d = float(_GEODESIC.measure(centre, (plat, plon)))
                    if d <= km:
                        found.append((key, d))
        found.sort(key=lambda item: item[1])
        return found
