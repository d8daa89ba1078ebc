"""The CLI's data files: ``.npy`` or ``.csv`` into a :class:`Table` (numbers, feature names, row
labels), the column choice (``--columns``, ``--drop``, ``--index-column``) and the per-column
scaling (``--scale``, ``scaling.json``).

CSV: a first line that does not parse as numbers is the header (its names label the features in
every output); without one the features are ``x0, x1, ...``. Quoted fields, blank lines and ``#``
comments are read as ``np.loadtxt`` reads them. A column is a text column when most of its cells are
not numbers (a timestamp, an id): it must be dropped (``--drop``) or used as row labels
(``--index-column``), else the command stops and names it. A stray text cell in a numeric column is
located instead ("found 'oops' at row 2, column 1 (line 4 of x.csv)").

Errors are ``ValueError`` (:class:`l1pca.kernels.InputError`) with ``DATA`` or the flag as the
argument's name; the CLI exits 2 with them.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l1pca.kernels import InputError
from l1pca.kernels._validation import check_layout, nonfinite_error
from l1pca.kernels.scoring import MAD_SCALE

SCALING_FILE = "scaling.json"
"""Written beside ``model.npz``: the scaling the model's data went through (``score --model`` reads it)."""


@dataclass(frozen=True)
class Table:
    """A data file's matrix with its names.

    values : ndarray (n_samples, n_features)
    features : list of str
        One name per column of ``values`` (the CSV header, else ``x0, x1, ...`` by file column).
    rows : list of str
        One label per row: the ``--index-column``'s values, else the row number from 0.
    """

    values: np.ndarray
    features: list
    rows: list


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _csv_lines(path):
    """``(line numbers, rows of cells)`` of every data-bearing line (blank lines and ``#`` comments
    skipped); one csv reader over the whole file."""
    try:
        with path.open(newline="") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"DATA={str(path)!r}: cannot read it as text ({exc})") from None
    numbers, bodies = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            numbers.append(lineno)
            bodies.append(line)
    return numbers, list(csv.reader(bodies, skipinitialspace=True))


def _read_csv(path):
    """``(columns of cells, header names or None, line numbers of the data rows)``."""
    numbers, rows = _csv_lines(path)
    header = None
    if rows and not all(_is_number(c) for c in rows[0] if c.strip()):
        header = [c.strip() for c in rows[0]]
        numbers, rows = numbers[1:], rows[1:]
    width = len(header) if header is not None else (len(rows[0]) if rows else 0)
    for row, cells in enumerate(rows):
        if len(cells) != width:
            first = "the header has" if header is not None else "row 0 has"
            raise InputError(f"DATA must have the same number of columns in every row; row {row} "
                             f"(line {numbers[row]} of {path}) has {len(cells)}, {first} {width}")
    columns = [list(col) for col in zip(*rows)] if rows else [[] for _ in range(width)]
    return columns, header, numbers


def _csv_header(path):
    """``(column names, lines to skip before the data)`` from the first data-bearing line: the
    header's names, or ``x0, x1, ...`` when it holds numbers (then nothing is skipped)."""
    try:
        with path.open(newline="") as fh:
            for lineno, line in enumerate(fh, 1):
                body = line.split("#", 1)[0].strip()
                if body:
                    cells = next(csv.reader([body], skipinitialspace=True))
                    if all(_is_number(c) for c in cells if c.strip()):
                        return [f"x{j}" for j in range(len(cells))], 0
                    return [c.strip() for c in cells], lineno
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"DATA={str(path)!r}: cannot read it as text ({exc})") from None
    return [], 0


def _read_csv_fast(path, skip, keep, index, width):
    """``(values, row labels)`` by NumPy's C reader, or None when it refuses the file (text in a
    chosen column, ragged rows, no data: the slow reader then says what and where)."""
    import warnings

    try:
        with path.open() as fh:
            # Every data line has width - 1 commas, else (a ragged row, a quoted comma) the slow
            # reader decides: np.loadtxt with usecols would not notice a row longer than the header.
            for lineno, line in enumerate(fh, 1):
                body = line.split("#", 1)[0].strip()
                if lineno > skip and body and body.count(",") != width - 1:
                    return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            X = np.loadtxt(path, delimiter=",", skiprows=skip, usecols=keep, ndmin=2,
                           quotechar='"', comments="#")
            rows = (np.loadtxt(path, delimiter=",", skiprows=skip, usecols=[index], ndmin=1,
                               dtype=str, quotechar='"', comments="#")
                    if index is not None else None)
    except (ValueError, UnicodeDecodeError):
        return None
    if X.shape[0] == 0:
        return None
    labels = ([str(r).strip() for r in rows] if rows is not None
              else [str(i) for i in range(X.shape[0])])
    return X, labels


def _resolve(token, names, flag):
    """The column index of ``token``: a name of ``names`` first, else a 0-based index."""
    token = str(token).strip()
    if token in names:
        return names.index(token)
    if token.lstrip("-").isdigit():
        j = int(token)
        if 0 <= j < len(names):
            return j
        raise InputError(f"{flag}={token!r}: DATA has columns 0 to {len(names) - 1}")
    raise InputError(f"{flag}={token!r} is not a column of DATA; its columns are "
                     f"{', '.join(names)}")


def _tokens(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [t for t in value.split(",") if t.strip()]
    return list(value)


def select_columns(names, *, columns=None, drop=None, index_column=None, prefer=None):
    """``(feature column indices, index column or None)`` from the flags' names or indices.
    ``prefer``: feature names (a stored model's) used as ``columns`` when none are given and the
    file has every one of them."""
    if columns is None and prefer is not None and set(prefer) <= set(names):
        columns = list(prefer)
    index = None if index_column is None else _resolve(index_column, names, "--index-column")
    if columns is not None:
        keep = [_resolve(t, names, "--columns") for t in _tokens(columns)]
        if not keep:
            raise InputError("--columns is empty; name at least one column")
    else:
        keep = list(range(len(names)))
    gone = {_resolve(t, names, "--drop") for t in _tokens(drop)}
    keep = [j for j in dict.fromkeys(keep) if j not in gone and j != index]
    if not keep:
        raise InputError("no feature columns left after --columns / --drop / --index-column")
    return keep, index


def _to_numbers(cells, j, name, line_numbers, path):
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    cells = [c.strip() for c in cells]
    bad = [i for i, c in enumerate(cells) if not _is_number(c)]
    if 2 * len(bad) > len(cells):  # mostly text: an id or a timestamp, not a sensor
        raise InputError(
            f"DATA column {name!r} (column {j}) holds text, e.g. {cells[bad[0]]!r} at row {bad[0]} "
            f"(line {line_numbers[bad[0]]} of {path}); drop it with --drop {name} or label the rows "
            f"with it with --index-column {name}")
    i = bad[0]
    raise InputError(f"DATA must hold numbers; found {cells[i]!r} at row {i}, column {j} "
                     f"(line {line_numbers[i]} of {path})")


def read_table(path, *, columns=None, drop=None, index_column=None, prefer=None):
    """Read DATA (``.npy`` or ``.csv``) into a :class:`Table`, keeping the chosen columns.

    ``columns`` / ``drop``: comma-separated names or 0-based indices of the file's columns (or
    lists); ``index_column``: the column whose values label the rows (not a feature); ``prefer``:
    see :func:`select_columns`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"DATA={str(path)!r}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"DATA={str(path)!r}: cannot read it as .npy ({exc})") from None
        arr = check_layout(arr, name="DATA")
        names = [f"x{j}" for j in range(arr.shape[1])]
        keep, index = select_columns(names, columns=columns, drop=drop, index_column=index_column,
                                     prefer=prefer)
        rows = ([f"{v:g}" for v in arr[:, index]] if index is not None
                else [str(i) for i in range(arr.shape[0])])
        X = arr[:, keep] if keep != list(range(arr.shape[1])) else arr
        features = [names[j] for j in keep]
    elif suffix in (".csv", ".txt"):
        names, skip = _csv_header(path)
        keep, index = select_columns(names, columns=columns, drop=drop, index_column=index_column,
                                     prefer=prefer)
        fast = _read_csv_fast(path, skip, keep, index, len(names))
        if fast is not None:
            X, rows = fast
        else:  # the slow reader, which says what is wrong and where
            cols, _, line_numbers = _read_csv(path)
            if not line_numbers:
                check_layout(np.empty((0, len(names))), name="DATA")  # "at least one sample ..."
            X = np.column_stack([_to_numbers(cols[j], j, names[j], line_numbers, path) for j in keep])
            rows = ([c.strip() for c in cols[index]] if index is not None
                    else [str(i) for i in range(len(line_numbers))])
        features = [names[j] for j in keep]
    else:
        raise InputError(f"DATA={str(path)!r}: expected a .npy or .csv file")
    X = check_layout(X, name="DATA")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise nonfinite_error(X, name="DATA")
    return Table(X, features, rows)


def load_matrix(path):
    """Read a 2-D matrix from ``.npy`` or ``.csv`` (rows = samples), every column a feature.

    Anything else raises ``ValueError`` (an :class:`~l1pca.kernels.InputError`) in the library's
    words, with ``DATA`` as the argument's name: "DATA must be 2-D (n_samples, n_features); got 1-D
    array of shape (5,)", "DATA must be finite; found nan at row 5, column 3 ...", "DATA must hold
    numbers; found 'abc' at row 2, column 1 (line 4 of x.csv)". Rows and columns count from 0, as
    in the array; a CSV's line counts from 1, as in an editor.
    """
    return read_table(path).values


# -- scaling ------------------------------------------------------------------------------------
SCALES = {
    "robust": "each column minus its median, over 1.4826 MAD (its robust standard deviation)",
    "none": "the data as given",
}


@dataclass(frozen=True)
class Scaling:
    """A per-column affine map, ``(x - center) / scale``, and the feature names it was made for."""

    method: str
    features: list
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, method, table: Table):
        """``"robust"``: per-column median and 1.4826 MAD of the table's values (a column with a
        zero MAD, more than half its cells equal, takes 1.2533 times its mean absolute deviation
        from the median, else 1); ``"none"``: the identity."""
        X = table.values
        d = X.shape[1]
        if method == "none":
            return cls("none", list(table.features), np.zeros(d), np.ones(d))
        if method != "robust":
            raise InputError(f"--scale={method!r} is not one of {', '.join(map(repr, SCALES))}")
        center = np.median(X, axis=0)
        dev = np.abs(X - center)
        scale = MAD_SCALE * np.median(dev, axis=0)
        mean_dev = 1.2533 * dev.mean(axis=0)  # sqrt(pi / 2): the normal's SD from its mean abs. dev.
        scale = np.where(scale > 0, scale, np.where(mean_dev > 0, mean_dev, 1.0))
        return cls("robust", list(table.features), center, scale)

    def apply(self, X):
        return (X - self.center) / self.scale

    def undo(self, Xs):
        return Xs * self.scale + self.center

    def to_json(self):
        return {"method": self.method, "features": self.features, "center": self.center.tolist(),
                "scale": self.scale.tolist()}

    def save(self, folder):
        path = Path(folder) / SCALING_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path):
        """Read ``scaling.json``; a file that is not one raises :class:`InputError` naming it."""
        try:
            obj = json.loads(Path(path).read_text())
            out = cls(str(obj["method"]), [str(f) for f in obj["features"]],
                      np.asarray(obj["center"], dtype=np.float64),
                      np.asarray(obj["scale"], dtype=np.float64))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{str(path)!r} is not a scaling file written by l1pca ({exc})") from None
        d = len(out.features)
        if out.center.shape != (d,) or out.scale.shape != (d,) or not (out.scale > 0).all():
            raise InputError(f"{str(path)!r} is not a scaling file written by l1pca (it needs one "
                             "center and one positive scale per feature)")
        return out
