"""Loading pickled pandas DataFrames without letting the file run code.

The original PlayItBack ships its annotation lists as pickled DataFrames. Unpickling calls whatever global a file
names, so a tampered ``.pkl`` can run any command on load. :func:`load_dataframe_pickle` only lets through the exact
classes and reconstruction helpers that pandas (1.x to 3.x) and numpy (1.x and 2.x) write for DataFrames of strings,
numbers and lists; any other global aborts the load before it is imported or called.

Convert pickles once, in an environment you trust, with ``python tools/prepare_annotations.py`` and use the CSV.
"""
from __future__ import annotations

import importlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["UnsafePickleError", "load_dataframe_pickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list, so loading it could run code."""


# Each allowed (module, name) written in a pickle maps to the places the object lives today, tried in order: pandas
# and numpy move things between releases, and a pickle keeps the path that was current when it was written.
# Every entry only builds data: a container class, a dtype, or a helper that fills an array from bytes. None of
# them imports, evaluates, opens or calls anything named by the file.
_NUMPY_RECONSTRUCT = (("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"))
_NUMPY_SCALAR = (("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"))
_NUMPY_FROMBUFFER = (("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"))
_UNPICKLE_BLOCK = (("pandas._libs.internals", "_unpickle_block"),)
_ALLOWED: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    # Python builtins used by pickle protocols 2-5 for slices (block placements) and bytes (protocol 2).
    ("builtins", "slice"): (("builtins", "slice"),),
    ("__builtin__", "slice"): (("builtins", "slice"),),
    ("_codecs", "encode"): (("_codecs", "encode"),),
    # pandas <= 1.3 pickles blocks as functools.partial(new_block, ndim=...); partial only wraps a callable that
    # already passed this list.
    ("functools", "partial"): (("functools", "partial"),),
    # numpy arrays, dtypes and scalars (numpy 1.x wrote numpy.core, numpy 2.x writes numpy._core).
    ("numpy", "ndarray"): (("numpy", "ndarray"),),
    ("numpy", "dtype"): (("numpy", "dtype"),),
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    # pandas frames, series and their block managers (pandas 1.x/2.x paths, and the top-level names of 3.x).
    ("pandas.core.frame", "DataFrame"): (("pandas", "DataFrame"),),
    ("pandas", "DataFrame"): (("pandas", "DataFrame"),),
    ("pandas.core.series", "Series"): (("pandas", "Series"),),
    ("pandas", "Series"): (("pandas", "Series"),),
    ("pandas.core.internals.managers", "BlockManager"): (("pandas.core.internals.managers", "BlockManager"),),
    ("pandas.core.internals.managers", "SingleBlockManager"): (
        ("pandas.core.internals.managers", "SingleBlockManager"),
    ),
    # pandas 1.3 named the block constructor new_block; its pickles need the 2.x/3.x helper with the same role.
    ("pandas.core.internals.blocks", "new_block"): _UNPICKLE_BLOCK,
    ("pandas._libs.internals", "_unpickle_block"): _UNPICKLE_BLOCK,
    # Indexes (Int64Index and friends were folded into Index in pandas 2.0).
    ("pandas.core.indexes.base", "_new_Index"): (("pandas.core.indexes.base", "_new_Index"),),
    ("pandas.core.indexes.base", "Index"): (("pandas", "Index"),),
    ("pandas", "Index"): (("pandas", "Index"),),
    ("pandas.core.indexes.numeric", "Int64Index"): (("pandas", "Index"),),
    ("pandas.core.indexes.numeric", "UInt64Index"): (("pandas", "Index"),),
    ("pandas.core.indexes.numeric", "Float64Index"): (("pandas", "Index"),),
    ("pandas.core.indexes.range", "RangeIndex"): (("pandas", "RangeIndex"),),
    ("pandas", "RangeIndex"): (("pandas", "RangeIndex"),),
    ("pandas.core.indexes.multi", "MultiIndex"): (("pandas", "MultiIndex"),),
    ("pandas", "MultiIndex"): (("pandas", "MultiIndex"),),
    # String and categorical columns (the default string dtype of pandas 3.x, and category columns).
    ("pandas", "StringDtype"): (("pandas", "StringDtype"),),
    ("pandas.core.arrays.string_", "StringDtype"): (("pandas", "StringDtype"),),
    ("pandas.arrays", "StringArray"): (("pandas.arrays", "StringArray"),),
    ("pandas.core.arrays.string_", "StringArray"): (("pandas.arrays", "StringArray"),),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"): (("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),),
    ("pandas", "Categorical"): (("pandas", "Categorical"),),
    ("pandas.core.arrays.categorical", "Categorical"): (("pandas", "Categorical"),),
    ("pandas", "CategoricalDtype"): (("pandas", "CategoricalDtype"),),
    ("pandas.core.dtypes.dtypes", "CategoricalDtype"): (("pandas", "CategoricalDtype"),),
}


def _resolve(locations: tuple[tuple[str, str], ...]) -> Any:
    """Import the first of ``locations`` that exists in the installed numpy/pandas."""
    for module_name, attr in locations:
        try:
            with warnings.catch_warnings():
                # numpy 2 warns on numpy.core; the fallback order already prefers numpy._core.
                warnings.simplefilter("ignore", DeprecationWarning)
                return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"none of {locations} exists in the installed numpy/pandas")


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only hands out the allow-listed globals."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        locations = _ALLOWED.get((module, name))
        if locations is None:
            raise UnsafePickleError(
                f"{self._path}: refusing to unpickle the global '{module}.{name}': it is not one of the pandas/numpy "
                "classes a DataFrame needs, so loading this file could run code. Convert the file to CSV in an "
                "environment you trust with `python tools/prepare_annotations.py INPUT --dataset D --out OUT.csv "
                "--allow-unsafe-pickle`, or, if you trust this file, set DATA.ALLOW_UNSAFE_PICKLE True "
                "(allow_unsafe=True in Python)."
            )
        return _resolve(locations)


def load_dataframe_pickle(path: str | Path, *, allow_unsafe: bool = False) -> pd.DataFrame:
    """Load a pickled pandas DataFrame, refusing any pickle that could run code.

    Args:
        path: The ``.pkl`` file.
        allow_unsafe: Opt-in for files you trust: load with ``pandas.read_pickle``, which runs whatever the pickle
            names. Use it only on files from a trusted source.

    Returns:
        The DataFrame stored in the file.

    Raises:
        FileNotFoundError: The file does not exist.
        UnsafePickleError: The pickle names a global outside the allow-list (nothing it names was imported or run).
        pickle.UnpicklingError: The file is not a readable pickle, or does not hold a DataFrame.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pickle file")
    if allow_unsafe:
        frame = pd.read_pickle(path)
    else:
        with path.open("rb") as handle:
            try:
                frame = _RestrictedUnpickler(handle, path).load()
            except UnsafePickleError:
                raise
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as err:
                problem = f"{type(err).__name__}: {err}"
                raise pickle.UnpicklingError(f"{path}: not a readable pandas pickle ({problem})") from err
    if not isinstance(frame, pd.DataFrame):
        raise pickle.UnpicklingError(f"{path}: holds a {type(frame).__name__}, expected a pandas DataFrame")
    return frame
