"""The on-disk encoding of a forest (forest format 3): lossless, numpy and zlib only.

`ForestArrays` keeps, per node, a feature (-1 for a leaf) and a threshold, and per leaf four
float32 means. On disk (format 2 saved those arrays as they are, 22 bytes a leaf at 1e6 rows):

- structure: one bit per node, split or leaf (`np.packbits`), which is all a breadth-first
  binary tree with adjacent children needs (a tree of n splits has 2n + 1 nodes: 2n + 1 bits);
  split features and thresholds are saved for the splits only (leaves have neither).
- leaf means, one column at a time: a column with few distinct values (the means of t and t^2
  when the treatment residual takes few values, as in a randomized design with a known
  propensity) is saved as its distinct values plus a uint8/uint16 code per leaf; any other
  column as its four byte planes (blosc's byte shuffle: sign and exponent bytes together
  compress well, mantissa bytes are noise).
- every array is split into byte planes, and each plane is zlib-compressed unless a trial on its
  first MiB saves under 3% (float mantissas do not compress: storing them raw keeps saving and
  loading fast). Planes are compressed and decompressed on a thread pool (zlib releases the GIL).

Everything is uint8 planes inside the same `arrays.npz` (loaded with allow_pickle=False, after
the checksums); the plane table (codec and decoded size of each plane) is JSON in the model's
checksummed metadata. Decoding checks every size and raises ValueError on any inconsistency.
"""

from __future__ import annotations

import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .cpus import usable_cpus
from .forest_arrays import ForestArrays

ENCODING = "tauforge.forest-planes"
ENCODING_VERSION = 1
ZLIB_LEVEL = 1  # with Huffman coding only (see _deflate), the level changes little
_TRIAL_BYTES = 1 << 20
_KEEP_IF_BELOW = 0.97  # compressed/raw ratio under which a plane is stored compressed
_MAX_DICTIONARY = 1 << 16
_DICTIONARY_SAMPLE = 1 << 16
_PREFIX = "forest3_"


def _workers() -> int:
    return max(1, min(4, usable_cpus()))


def _planes(name: str, a: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The byte planes of 1-D array `a` (plane b holds byte b of every element)."""
    a = np.ascontiguousarray(a)
    k = a.dtype.itemsize
    if k == 1:
        return [(f"{name}__b0", a.view(np.uint8))]
    by_element = a.view(np.uint8).reshape(-1, k)
    return [(f"{name}__b{b}", np.ascontiguousarray(by_element[:, b])) for b in range(k)]


def _deflate(data: np.ndarray, level: int) -> bytes:
    # Huffman coding only: these planes are memoryless (exponent bytes, codes), so LZ77's matching
    # costs time and gains nothing (on 40 trees at 1e6 rows: 8.71 bytes a leaf in 0.23 s against
    # 9.13 in 0.52 s for level 1's default strategy and 8.99 in 1.53 s for level 6).
    deflate = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return deflate.compress(data) + deflate.flush()


def _compress(plane: np.ndarray, level: int) -> tuple[np.ndarray, str]:
    trial = plane[:_TRIAL_BYTES]
    if len(trial) == 0 or len(_deflate(trial, level)) > _KEEP_IF_BELOW * len(trial):
        return plane, "raw"
    packed = _deflate(plane, level)
    if len(packed) > _KEEP_IF_BELOW * len(plane):
        return plane, "raw"
    return np.frombuffer(packed, dtype=np.uint8), "zlib"


def _dictionary(column: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(distinct values, codes) of a uint32 column whose values repeat (at most 2^16 distinct, each
    seen 16 times on average), else None. A sample decides cheaply and gives the dictionary; the
    few values it missed are added (never a sort of the whole column: 10 s at 6e7 leaves)."""
    limit = min(_MAX_DICTIONARY, len(column) // 16)
    step = max(1, len(column) // _DICTIONARY_SAMPLE)
    sample = column[::step]
    values = np.unique(sample)
    if len(values) > min(limit, len(sample) // 16):
        return None
    codes, missed = _code(values, column)
    if missed.any():
        if missed.sum() > len(column) // 16:
            return None
        values = np.union1d(values, column[missed])
        if len(values) > limit:
            return None
        codes, missed = _code(values, column)
        assert not missed.any()
    return values, codes.astype(np.uint8 if len(values) <= 256 else np.uint16)


def _code(values: np.ndarray, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each element's index in sorted `values` and where it is not there: a multiplicative hash
    into a 2^16-slot table (three passes over the column; a binary search per element is 10x
    slower), with a binary search only for elements whose slot another value won."""
    def slot(u):
        return (u * np.uint32(2654435761)) >> np.uint32(16)  # Knuth's hash, uint32 wrapping

    table = np.zeros(1 << 16, dtype=np.int32)
    table[slot(values)] = np.arange(len(values), dtype=np.int32)
    codes = table[slot(column)]
    clash = values[codes] != column
    if clash.any():
        found = np.searchsorted(values, column[clash]).astype(np.int32)
        found[found == len(values)] = 0
        codes[clash] = found
        clash[clash] = values[found] != column[clash]
    return codes, clash


def encode(forest: ForestArrays, level: int = ZLIB_LEVEL) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays to save (uint8 planes and the two int64 offset arrays) and the JSON plane table."""
    is_split = forest.feature >= 0
    named: list[tuple[str, np.ndarray]] = []
    named += _planes("structure", np.packbits(is_split))
    named += _planes("split_feature", forest.feature[is_split])
    named += _planes("split_threshold", forest.threshold[is_split].astype(np.uint16))
    columns = []
    for j in range(forest.leaf_values.shape[1]):
        column = np.ascontiguousarray(forest.leaf_values[:, j], dtype=np.float32).view(np.uint32)
        coded = _dictionary(column)
        if coded is None:
            columns.append({"kind": "planes"})
            named += _planes(f"leaf{j}", column)
        else:
            values, codes = coded
            columns.append({"kind": "dictionary", "n_values": len(values), "codes_dtype": codes.dtype.name})
            named += _planes(f"leaf{j}_values", values.astype(np.uint32)) + _planes(f"leaf{j}_codes", codes)
    with ThreadPoolExecutor(_workers()) as pool:
        packed = list(pool.map(lambda item: _compress(item[1], level), named))
    arrays = {_PREFIX + name: data for (name, _), (data, _) in zip(named, packed)}
    arrays["forest_tree_offsets"] = np.asarray(forest.tree_offsets, dtype=np.int64)
    arrays["forest_leaf_offsets"] = np.asarray(forest.leaf_offsets, dtype=np.int64)
    spec = {"encoding": ENCODING, "version": ENCODING_VERSION, "byteorder": sys.byteorder,
            "n_nodes": int(len(forest.feature)),
            "n_leaves": int(len(forest.leaf_values)), "n_columns": int(forest.leaf_values.shape[1]),
            "feature_dtype": forest.feature.dtype.name, "leaf_columns": columns,
            "planes": {name: {"codec": codec, "size": int(len(plane))}
                       for (name, plane), (_, codec) in zip(named, packed)}}
    return arrays, spec


class _Planes:
    """Planes decoded on demand, an array at a time (its planes in parallel), checked against the
    plane table; a decoded array's compressed planes are dropped at once to bound memory."""

    def __init__(self, arrays: dict[str, np.ndarray], spec: dict, pool: ThreadPoolExecutor):
        self._table = spec["planes"]
        missing = [name for name in self._table if _PREFIX + name not in arrays]
        if missing:
            raise ValueError(f"the saved forest lacks the planes {', '.join(missing[:5])}")
        # Taken out of `arrays`, so that each compressed plane is freed once decoded.
        self._data = {name: arrays.pop(_PREFIX + name) for name in self._table}
        self._pool = pool
        self._swap = spec.get("byteorder", "little") != sys.byteorder  # planes are in the writer's byte order

    def _decode(self, name: str) -> np.ndarray:
        entry, data = self._table[name], self._data.pop(name)
        if data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError(f"forest plane {name} is {data.dtype}{list(data.shape)}, expected 1-D uint8")
        if entry["codec"] == "zlib":
            try:
                data = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
            except zlib.error as exc:
                raise ValueError(f"forest plane {name} does not decompress: {exc}") from None
        elif entry["codec"] != "raw":
            raise ValueError(f"forest plane {name} has an unknown codec {entry['codec']!r}")
        if len(data) != entry["size"]:
            raise ValueError(f"forest plane {name} holds {len(data)} bytes, expected {entry['size']}")
        return data

    def array(self, name: str, dtype, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """1-D array `name` of `dtype` and length `n`, from its byte planes; written into `out`,
        an (n, itemsize) uint8 view, if given (a column of the leaf values, without a copy)."""
        dtype = np.dtype(dtype)
        names = [f"{name}__b{b}" for b in range(dtype.itemsize)]
        if any(p not in self._data for p in names):
            raise ValueError(f"forest array {name} lacks some of its {dtype.itemsize} byte planes")
        planes = list(self._pool.map(self._decode, names))
        if any(len(p) != n for p in planes):
            raise ValueError(f"forest array {name} has {len(planes[0])} elements, expected {n}")
        if out is None:
            out = np.empty(n, dtype=dtype)
            bytes_of = out.view(np.uint8).reshape(n, dtype.itemsize)
        else:
            bytes_of = out
        for b, p in enumerate(planes[::-1] if self._swap else planes):
            bytes_of[:, b] = p
        return out


def decode(arrays: dict[str, np.ndarray], spec: dict, max_depth: int) -> ForestArrays:
    """The ForestArrays that `encode` saved (its planes are removed from `arrays`, to free them as
    they are decoded); ValueError if the arrays and the table disagree."""
    if not isinstance(spec, dict) or spec.get("encoding") != ENCODING:
        raise ValueError(f"unknown forest encoding {spec.get('encoding') if isinstance(spec, dict) else spec!r}")
    try:
        if int(spec.get("version", 0)) > ENCODING_VERSION:
            raise ValueError(f"forest encoding version {spec['version']} is newer than this tauforge reads "
                             f"({ENCODING_VERSION}); upgrade tauforge to load it")
        n_nodes, n_leaves, n_columns = int(spec["n_nodes"]), int(spec["n_leaves"]), int(spec["n_columns"])
        if n_columns != 4:  # prediction reads the means of (t, y, ty, tt) of every leaf, unchecked
            raise ValueError(f"the saved forest's leaves hold {n_columns} values each, expected 4")
        feature_dtype = np.dtype(spec["feature_dtype"])
        with ThreadPoolExecutor(_workers()) as pool:
            planes = _Planes(arrays, spec, pool)
            feature, threshold, leaf_values = _decode_arrays(planes, spec, n_nodes, (n_nodes + 7) // 8, n_leaves,
                                                             n_columns, feature_dtype)
        saved = {"forest_feature": feature, "forest_threshold": threshold, "forest_leaf_values": leaf_values,
                 "forest_tree_offsets": arrays["forest_tree_offsets"],
                 "forest_leaf_offsets": arrays["forest_leaf_offsets"]}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the saved forest's encoding table or arrays are malformed ({exc!r})") from None
    return ForestArrays.from_arrays(saved, max_depth)


def _decode_arrays(planes: _Planes, spec: dict, n_nodes: int, n_structure: int, n_leaves: int, n_columns: int,
                   feature_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    is_split = np.unpackbits(planes.array("structure", np.uint8, n_structure), count=n_nodes).view(bool)
    n_splits = int(is_split.sum())
    feature = np.full(n_nodes, -1, dtype=feature_dtype)
    split_feature = planes.array("split_feature", feature_dtype, n_splits)
    if n_splits and split_feature.min() < 0:
        raise ValueError("the saved forest has a split without a feature")
    feature[is_split] = split_feature
    threshold = np.zeros(n_nodes, dtype=np.uint16)
    threshold[is_split] = planes.array("split_threshold", np.uint16, n_splits)
    leaf_values = np.empty((n_leaves, n_columns), dtype=np.float32)
    bits = leaf_values.view(np.uint32)
    column_bytes = leaf_values.view(np.uint8).reshape(n_leaves, 4 * n_columns)
    for j, column in enumerate(spec["leaf_columns"]):
        if column["kind"] == "planes":
            planes.array(f"leaf{j}", np.uint32, n_leaves, out=column_bytes[:, 4 * j:4 * j + 4])
        elif column["kind"] == "dictionary":
            values = planes.array(f"leaf{j}_values", np.uint32, int(column["n_values"]))
            codes = planes.array(f"leaf{j}_codes", np.dtype(column["codes_dtype"]), n_leaves)
            if n_leaves and codes.max() >= len(values):
                raise ValueError(f"leaf column {j} has codes beyond its {len(values)} values")
            bits[:, j] = values[codes]
        else:
            raise ValueError(f"leaf column {j} has an unknown encoding {column['kind']!r}")
    if len(spec["leaf_columns"]) != n_columns:
        raise ValueError("the saved forest's leaf columns disagree with its table")
    return feature, threshold, leaf_values
