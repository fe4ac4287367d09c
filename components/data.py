"""The data contract: which column plays which causal role, checked before anything is fit.

A `DataSpec` names the outcome, the treatment, the covariates X (effect modifiers) and the
controls W (confounders not used for heterogeneity), and optionally a unit id, a group, a
timestamp, sample weight and instrument, plus the assignment mechanism. `validate` fails fast with a
`DataValidationError` naming the column and the problem. What is suspicious but not fatal is
a warning recorded in the model card: a constant covariate or control here (it can never split
and carries no information, as scikit-learn, EconML and grf also accept it), positivity and
balance in `components.evaluate`.
"""

import dataclasses
import hashlib
import json
import numbers
import os
import reprlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tauforge.kernels._inputs import check_groups, check_moments, plain
from tauforge.kernels.ate import few_groups_message

from . import config
from ._kfp import Dataset, Output, component
from .constants import ASSIGNMENTS, SMALL_DATA_ROWS, TREATMENT_TYPES, UNIT_ID_FIELD


class DataValidationError(ValueError):
    """The table does not satisfy its DataSpec; the message names the column and the problem."""


@dataclass
class DataSpec:
    """Causal roles of a table's columns.

    covariates : the effect modifiers X; empty means every numeric column without another role.
    controls : confounders W used by the nuisance models only.
    treatment_type : 'binary' (0/1), 'continuous', or 'auto' (binary when the column is 0/1).
    assignment : 'observational', or 'randomized' with the known `propensity`.
    min_rows_per_arm : a binary treatment needs at least this many rows in each arm.
    group : a column labelling rows that are not independent (a unit's repeated rows, a
        household, a market): each group is held out whole in cross-fitting, drawn whole by the
        trees, and counted once in every standard error (`CausalForestDML.fit(groups=)`).
    """

    outcome: str
    treatment: str
    covariates: list[str] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)
    unit_id: str | None = None
    timestamp: str | None = None
    weight: str | None = None
    group: str | None = None
    instrument: str | None = None
    treatment_type: str = "auto"
    assignment: str = "observational"
    propensity: float | None = None
    min_rows_per_arm: int = 10

    def to_json(self) -> str:
        return config.to_json(self)

    @classmethod
    def from_json(cls, text: str) -> "DataSpec":
        return config.from_json(cls, text, "DataSpec")

    def check(self) -> None:
        """What can be checked without the table: the choices and the assignment's propensity."""
        if self.treatment_type not in TREATMENT_TYPES:
            raise DataValidationError(f"treatment_type must be one of {', '.join(TREATMENT_TYPES)}, "
                                      f"got {self.treatment_type!r}")
        if self.assignment not in ASSIGNMENTS:
            raise DataValidationError(f"assignment must be one of {', '.join(ASSIGNMENTS)}, got {self.assignment!r}")
        # A spec edited as JSON (a pipeline parameter) can carry "10" or true: say so here, not
        # with a TypeError from inside validate.
        if isinstance(self.min_rows_per_arm, bool) or not isinstance(self.min_rows_per_arm, numbers.Integral) or \
                self.min_rows_per_arm < 0:
            raise DataValidationError(f"min_rows_per_arm must be a whole number (0 or more), got "
                                      f"{self.min_rows_per_arm!r}")
        if self.propensity is not None and (isinstance(self.propensity, bool)
                                            or not isinstance(self.propensity, numbers.Real)):
            raise DataValidationError(f"propensity must be a number in (0, 1), got {self.propensity!r}")
        if self.assignment == "randomized" and not (self.propensity is not None and 0 < self.propensity < 1):
            raise DataValidationError(f"assignment 'randomized' needs the known propensity in (0, 1), "
                                      f"got {self.propensity!r}")
        if self.instrument:
            raise DataValidationError("instrument: instrumental-variable estimation is not supported yet; drop the "
                                      "instrument column")
        for role in ("covariates", "controls"):  # a string is a sequence too: "x0" read as 'x' and '0'
            if isinstance(getattr(self, role), str):
                raise DataValidationError(f"{role} must be a list of column names, got the string "
                                          f"{getattr(self, role)!r}: write [{getattr(self, role)!r}]")

    @property
    def binary(self) -> bool:
        if self.treatment_type == "auto":
            raise RuntimeError("treatment_type is unresolved; use the spec `validate` returns")
        return self.treatment_type == "binary"

    def role_columns(self) -> list[str]:
        """Every column the spec uses, each once, in a stable order."""
        singles = [self.outcome, self.treatment, self.unit_id, self.group, self.timestamp, self.weight,
                   self.instrument]
        cols = [c for c in singles if c] + list(self.covariates) + list(self.controls)
        return list(dict.fromkeys(cols))


@dataclass
class ValidatedData:
    """A table that passed `validate`, with the spec resolved (covariates, treatment type) and
    what validation found suspicious but not fatal."""

    table: pd.DataFrame  # the spec's columns, then any others kept for the causal graph's checks
    spec: DataSpec
    warnings: list[str] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray | None]:
        """The roles as float64 arrays. Weights come scaled to mean 1, as `CausalForestDML.fit`
        scales them: they say how much rows count relative to each other, and the nuisance
        models' penalties are not scale-free (weights of 1e6 moved a run's ATE from 0.02 to 0.27)."""
        s, t = self.spec, self.table
        weight = t[s.weight].to_numpy(np.float64) if s.weight else None
        return {
            "Y": t[s.outcome].to_numpy(np.float64),
            "T": t[s.treatment].to_numpy(np.float64),
            "X": t[s.covariates].to_numpy(np.float64),
            "W": t[s.controls].to_numpy(np.float64) if s.controls else None,
            "sample_weight": None if weight is None else weight / weight.mean(),
            "groups": self.group_codes(),
        }

    def group_codes(self) -> np.ndarray | None:
        """The group column's labels as codes 0..G-1 (`kernels._inputs.check_groups`), worked out
        once: sorting a million string labels takes a second, and the steps ask often."""
        if not self.spec.group:
            return None
        if getattr(self, "_group_codes", None) is None:
            self._group_codes = check_groups(self.table[self.spec.group], len(self.table))
        return self._group_codes


def read_table(source: str, id_columns=()) -> pd.DataFrame:
    """Read Parquet or CSV (by extension; a directory is a Parquet dataset) from a path or an
    fsspec URI, with pyarrow. A CSV's `id_columns` (those it has) are read as text, not inferred:
    an id written 007 stays "007", as a request or a Parquet file of strings gives it. An empty
    cell there is a missing id; so is an unquoted NA (or null, NaN) in a file that quotes its text,
    as R's write.csv writes a missing value beside quoted names. In a file that quotes nothing
    (pandas' to_csv), NA is a name (Namibia's code), as the server logs it."""
    import fsspec
    import pyarrow
    import pyarrow.csv
    import pyarrow.parquet

    fs, path = fsspec.core.url_to_fs(source)
    if not fs.exists(path):
        raise DataValidationError(f"data source {config.redacted_uri(source)!r} does not exist")
    try:
        if path.lower().endswith((".csv", ".csv.gz")):
            with fs.open(path, "rb", compression="infer") as f:
                quotes_text = b'"' in f.read(1 << 16)
                f.seek(0)
                as_text = pyarrow.csv.ConvertOptions(column_types={c: pyarrow.string() for c in id_columns if c},
                                                     strings_can_be_null=quotes_text,
                                                     quoted_strings_can_be_null=False)
                table = pyarrow.csv.read_csv(f, convert_options=as_text).to_pandas()
            for c in id_columns:  # an empty cell is a missing id (Parquet's null), not the id ''
                if c and c in table.columns:
                    table[c] = table[c].mask(table[c] == "")
            if len(table.columns) == 1 and any(sep in str(table.columns[0]) for sep in ";\t"):
                raise DataValidationError(f"{config.redacted_uri(source)!r} reads as one column "
                                          f"{reprlib.repr(str(table.columns[0]))}: its fields are separated by "
                                          "';' or tabs, and tauforge reads commas; write it as Parquet or with "
                                          "commas (and '.' for decimals)")
            return table
        return _read_parquet(fs, path, config.redacted_uri(source))
    except (OSError, pyarrow.ArrowInvalid, UnicodeDecodeError) as exc:
        # The header's bytes (Python's error), or an id column's value (pyarrow's; other columns'
        # values are read as bytes, and refused where used as numbers).
        if isinstance(exc, UnicodeDecodeError) or "invalid UTF8" in str(exc):
            where = f"{exc.reason} at byte {exc.start}" if isinstance(exc, UnicodeDecodeError) else str(exc)
            raise DataValidationError(f"cannot read {config.redacted_uri(source)!r}: it is not UTF-8 ({where}); save "
                                      "it as UTF-8 (or Parquet)") from None
        if path.lower().endswith((".csv", ".csv.gz")) and "Expected 1 columns" in str(exc):
            raise DataValidationError(f"cannot read {config.redacted_uri(source)!r} as CSV: its header is one column "
                                      f"and its rows more ({exc}): its fields are separated by ';' or tabs, and "
                                      "tauforge reads commas; write it as Parquet or with commas (and '.' for "
                                      "decimals)") from None
        kind = "CSV" if path.lower().endswith((".csv", ".csv.gz")) else "Parquet (a CSV file's name ends in .csv)"
        raise DataValidationError(f"cannot read {config.redacted_uri(source)!r} as {kind}: {exc}") from None


def _check_same_columns(dataset, where: str) -> None:
    """The files of a Parquet folder must hold the same columns: pyarrow takes the first file's
    and fills a column another file lacks with nulls (refused later as "missing values", the real
    cause unnamed: a user review) and drops one only a later file has. Partition keys (region=3)
    are in no file. Reads each file's footer only."""
    fragments = iter(dataset.get_fragments())
    first = next(fragments, None)
    if first is None:
        return
    expected = first.physical_schema.names
    for fragment in fragments:
        names = fragment.physical_schema.names
        if set(names) != set(expected):
            lacks = [n for n in expected if n not in names]
            adds = [n for n in names if n not in expected]
            raise DataValidationError(
                f"the files of {where!r} hold different columns: {fragment.path!r}"
                + (f" lacks {', '.join(map(repr, lacks[:5]))}" if lacks else "")
                + (" and" if lacks and adds else "")
                + (f" has {', '.join(map(repr, adds[:5]))}" if adds else "")
                + f" against {first.path!r}; write every file of a table with the same columns")


def _read_parquet(fs, path: str, where: str) -> pd.DataFrame:
    """A Parquet file, or a folder of them. A folder's files are read in the order their names
    sort as people number them (part.2 before part.10, as dask and Spark write them: a table
    sorted by time stays sorted), files and folders named '_...' or '.…' skipped (_SUCCESS), and
    hive partition folders (region=3) read as numbers where their values are. Decimal columns
    (databases' NUMERIC) are read as float64."""
    import re

    import pyarrow
    import pyarrow.dataset
    import pyarrow.parquet

    folder = fs.isdir(path)
    if folder:
        base = path.rstrip("/")

        def hidden(file: str) -> bool:
            return any(part.startswith((".", "_")) for part in file[len(base) + 1:].split("/"))

        def natural(file: str) -> list:
            return [int(piece) if piece.isdecimal() else piece for piece in re.split(r"(\d+)", file)]

        files = sorted((f for f in fs.find(base) if not hidden(f)), key=natural)
        if not files:
            raise DataValidationError(f"{where!r} is a folder without data files")
        dataset = pyarrow.dataset.dataset(
            files, filesystem=fs, format="parquet", partition_base_dir=base,
            partitioning=pyarrow.dataset.HivePartitioning.discover(infer_dictionary=False))
        names = dataset.schema.names
        _check_same_columns(dataset, where)
    else:
        names = pyarrow.parquet.read_schema(path, filesystem=fs).names
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise DataValidationError(f"column {repeated!r} appears more than once in {where!r}: give each column "
                                  "its own name")
    table = dataset.to_table() if folder else pyarrow.parquet.read_table(path, filesystem=fs)
    decimals = [i for i, f in enumerate(table.schema) if pyarrow.types.is_decimal(f.type)]
    for i in decimals:
        table = table.set_column(i, table.schema.field(i).name, table.column(i).cast(pyarrow.float64()))
    return table.to_pandas()


def validate(df: pd.DataFrame, spec: DataSpec, keep=()) -> ValidatedData:
    """Check `df` against `spec`; return the needed columns and the resolved spec, or raise
    DataValidationError naming the first column at fault. Columns of `keep` (the causal graph's
    observed nodes) that have no role are kept too, after the spec's, unchecked: the graph's
    implications are tested on them (`graph_checks`), and nothing is estimated from them."""
    def fail(msg: str) -> None:
        raise DataValidationError(msg)

    spec.check()
    dupes = sorted({str(c) for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        fail(f"column {dupes[0]!r} appears more than once in the table")

    roles = {"outcome": [spec.outcome], "treatment": [spec.treatment], "covariates": list(spec.covariates),
             "controls": list(spec.controls), "unit_id": [spec.unit_id], "timestamp": [spec.timestamp],
             "weight": [spec.weight], "group": [spec.group]}
    seen: dict[str, str] = {}
    for role, cols in roles.items():
        for c in cols:
            if c is None:
                continue
            if c not in df.columns:
                # "x0, T, Y" as a header gives ' T': shown plainly, the spaces did not show (a review).
                near = [k for k in df.columns if isinstance(k, str) and k != c and k.strip() == str(c).strip()]
                fail(f"{role} column {c!r} is missing from the table"
                     + (f"; it has {near[0]!r}, with spaces: strip the header's names or name that column"
                        if near else f" (columns: {_preview(df.columns)})"))
            if c in seen and seen[c] == role:
                fail(f"{role} column {c!r} is listed twice; list it once")
            if c in seen:
                fail(f"column {c!r} is given two roles: {seen[c]} and {role}")
            seen[c] = role

    n = len(df)  # first: a table of no rows has no numeric columns either
    if n < max(2 * spec.min_rows_per_arm, 2):
        fail(f"the table has {n} rows; at least {max(2 * spec.min_rows_per_arm, 2)} are needed")
    covariates = list(spec.covariates)
    left_out = []  # columns the default covariates skip, said in a warning below
    defaulted = not covariates
    if defaulted:
        index_like = [c for c in df.columns if c not in seen and _is_written_index(c)]
        covariates = [c for c in df.columns if c not in seen and c not in index_like
                      and pd.api.types.is_numeric_dtype(df[c])]
        left_out = [c for c in df.columns if c not in seen and c not in covariates and c not in index_like]
        if not covariates:
            fail("covariates: none given and the table has no other numeric column"
                 + (f" but {', '.join(map(repr, index_like))}, which looks like a written row index; name it as a "
                    "covariate if it is one" if index_like else "")
                 # Text such as "1,000" or "12%" is no number: name what was skipped (a review).
                 + (f"; the columns left out ({', '.join(map(repr, left_out[:5]))}"
                    f"{' and more' if len(left_out) > 5 else ''}) are not numeric: encode them as numbers"
                    if left_out else ""))
    if UNIT_ID_FIELD in covariates:
        # A serving request names its unit id so: the model could never be scored by name (a review).
        fail(f"covariate {UNIT_ID_FIELD!r}"
             + (" (picked as a covariate by default)" if defaulted else "")
             + f": serving reads a request's unit id from the key {UNIT_ID_FIELD!r}, so no covariate may bear that "
               "name; declare it as the unit id (DataSpec.unit_id, --unit-id) if it identifies units, else rename it"
             + (" or name the covariates" if defaulted else ""))
    spec = dataclasses.replace(spec, covariates=covariates, controls=list(spec.controls))

    numeric = [spec.outcome, spec.treatment, *covariates, *spec.controls] + ([spec.weight] if spec.weight else [])
    for c in numeric:
        col = df[c]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            if col.isna().all():  # a CSV column with no value reads as nulls, typed object
                fail(f"column {c!r} is empty: missing in every row; drop it")
            try:
                as_numbers = pd.to_numeric(col.astype(object), errors="coerce")
            except (TypeError, ValueError):  # lists, dicts: nothing to convert
                as_numbers = pd.Series(np.nan, index=col.index)
            unread = (as_numbers.isna() & col.notna()).to_numpy()
            if unread.any():
                row = int(np.argmax(unread))
                value = col.iloc[row]
                fail(f"column {c!r} is not numeric (dtype {col.dtype}): row {row} holds "
                     f"{reprlib.repr(plain(value) if np.ndim(value) == 0 else value)}, which is not a number; "
                     "encode it as numbers first")
            if col.isna().any():  # numbers (or booleans) and missing values: pyarrow's nullable bool is read so
                fail(f"column {c!r} has {int(col.isna().sum())} missing value(s) (first at row "
                     f"{int(np.argmax(col.isna().to_numpy()))}); drop or impute them")
            fail(f"column {c!r} holds numbers as {col.dtype}; convert it first (pd.to_numeric(df[{c!r}]))")
        if pd.api.types.is_complex_dtype(col):  # float64 would drop the imaginary part with a warning only
            fail(f"column {c!r} holds complex numbers (dtype {col.dtype}); give its real and imaginary parts "
                 "columns of their own")
        values = col.to_numpy(np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        picked = " (picked as a covariate by default: name the covariates to leave it out)" if (
            defaulted and c in covariates) else ""
        if bad.any():
            what = "NaN" if np.isnan(values[bad]).any() else "inf"
            fail(f"column {c!r} has {int(bad.sum())} {what}/missing value(s) (first at row {int(np.argmax(bad))}); "
                 f"drop or impute them{picked}")
        huge = np.abs(values) > MAX_ABS_VALUE
        if huge.any():  # squares and sums of them overflow in the models: NaN far from here
            fail(f"column {c!r} has {int(huge.sum())} value(s) beyond +-{MAX_ABS_VALUE:g} (first at row "
                 f"{int(np.argmax(huge))}, {values[huge][0]:g}); rescale it{picked}")
    try:  # the outcome and the treatment together, as the forest's float32 leaf moments hold them
        check_moments(*(df[c].to_numpy(np.float64, na_value=np.nan) for c in (spec.outcome, spec.treatment)),
                      f"outcome {spec.outcome!r}", f"treatment {spec.treatment!r}")
    except ValueError as exc:
        fail(str(exc))

    def first(c: str):  # a plain Python value, shown as the user wrote it (1.0, not np.float64(1.0))
        return plain(df[c].iloc[0])

    for c in (spec.outcome, spec.treatment):
        if df[c].nunique(dropna=False) < 2:
            fail(f"column {c!r} is constant ({first(c)!r} in every row): it carries no information")
    warnings = [f"{role} {c!r} is constant ({first(c)!r} in every row): it can never split and carries no "
                "information" for role, cols in (("covariate", covariates), ("control", spec.controls))
                for c in cols if df[c].nunique(dropna=False) < 2]
    if n < SMALL_DATA_ROWS:
        warnings.append(f"the table has {n} rows: under {SMALL_DATA_ROWS} the refuters' refits and the heterogeneity "
                        "checks (on a held-out half) have little power: a passed gate says little here")
    if left_out:
        warnings.append(f"column(s) {_preview(left_out)} are not numeric and were left out of the covariates; "
                        "encode them as numbers, or name the covariates, to use them")
    if defaulted and index_like:
        warnings.append(f"column(s) {', '.join(map(repr, index_like))} look like a written row index and were left "
                        "out of the covariates; name the covariates to use them")
    id_like = [c for c in covariates if defaulted and _looks_like_id(c, df[c])]
    if id_like:
        warnings.append(f"covariate(s) {_preview(id_like)}, picked by default, look like ids (distinct integers, "
                        "or a name ending in id): a model that splits on an id does not generalize; name the "
                        "covariates to leave them out")
    if spec.weight and (df[spec.weight] < 0).any():
        fail(f"weight column {spec.weight!r} has negative values")
    if spec.weight and not (df[spec.weight] > 0).any():
        fail(f"weight column {spec.weight!r} is zero in every row")

    t = df[spec.treatment].to_numpy(np.float64)
    is_binary = bool(np.isin(t, (0.0, 1.0)).all())
    # A 0/1 column one rounding error off (1.0000000000000002) was read as a continuous dose.
    rounded = np.round(t)
    if (spec.treatment_type != "continuous" and not is_binary and np.isin(rounded, (0.0, 1.0)).all()
            and (rounded == 0).any() and (rounded == 1).any() and np.abs(t - rounded).max() <= 1e-9):
        row = int(np.argmax(t != rounded))
        fail(f"treatment column {spec.treatment!r} is 0/1 up to rounding (row {row} holds {float(t[row])!r}): round "
             "it to 0/1 first, or declare the treatment continuous")
    if spec.treatment_type == "binary" and not is_binary:
        values = np.unique(t)
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
        fail(f"treatment column {spec.treatment!r} is declared binary but takes {len(values)} values ({shown}); "
             "recode it as 0/1 or declare it continuous")
    treatment_type = spec.treatment_type if spec.treatment_type != "auto" else ("binary" if is_binary else "continuous")
    if spec.treatment_type == "auto" and not is_binary and len(levels := np.unique(t)) == 2:
        fail(f"treatment column {spec.treatment!r} takes two values ({levels[0]:g}, {levels[1]:g}): recode them as "
             "0 (control) and 1 (treated) for the average effect of treating, or declare the treatment "
             "continuous if it is a dose (the effect is then per unit of it)")
    if spec.treatment_type == "auto" and not is_binary and len(levels) <= 5:  # arms coded otherwise?
        shown = ", ".join(f"{v:g}" for v in levels)
        warnings.append(f"treatment {spec.treatment!r} takes {len(levels)} values ({shown}) and is taken as "
                        "continuous: the estimate is the average effect of one unit of it; recode two arms as 0/1 "
                        "for the ATE, or declare it continuous to silence this")
    if spec.assignment == "randomized" and treatment_type != "binary":
        fail(f"assignment 'randomized' with a known propensity needs a binary treatment; {spec.treatment!r} is "
             "continuous (declare the assignment observational)")
    if treatment_type == "binary":
        weighted = df[spec.weight].to_numpy(np.float64) > 0 if spec.weight else np.ones(len(t), bool)
        for arm in (0, 1):
            count = int((t == arm).sum())
            if count < spec.min_rows_per_arm:
                fail(f"treatment column {spec.treatment!r} has {count} row(s) with value {arm}; "
                     f"at least {spec.min_rows_per_arm} per arm are needed")
            count = int(((t == arm) & weighted).sum())  # a zero weight takes a row out of the estimate
            if count < spec.min_rows_per_arm:
                fail(f"weight column {spec.weight!r} is positive in {count} row(s) with treatment {arm}; at least "
                     f"{spec.min_rows_per_arm} per arm are needed")
    if spec.assignment == "randomized":
        from scipy.stats import binomtest  # here: validating a table without a trial loads no scipy.stats

        treated, p = int((t == 1).sum()), float(spec.propensity)
        p_value = binomtest(treated, len(t), p).pvalue
        said = (f"assignment 'randomized': {spec.treatment!r} is 1 in {treated} of {len(t)} rows "
                f"({treated / len(t):.1%}), against the declared propensity {p:g} (binomial p = {p_value:.2g})")
        if p_value < PROPENSITY_REFUSE_P:
            fail(f"{said}; declare the propensity the trial used, or the assignment observational")
        if p_value < PROPENSITY_WARN_P:
            warnings.append(f"{said}; check that the declared propensity is the trial's")
    if spec.unit_id:
        if (missing := int(df[spec.unit_id].isna().sum())):  # (two were called duplicates)
            fail(f"unit_id column {spec.unit_id!r} has {missing} missing id(s) (first at row "
                 f"{int(np.argmax(df[spec.unit_id].isna().to_numpy()))}); every row needs its unit's id")
        dup = df[spec.unit_id].duplicated()
        if dup.any():
            first = int(np.argmax(dup.to_numpy()))
            fail(f"unit_id column {spec.unit_id!r} has duplicate ids (first: {plain(df[spec.unit_id].iloc[first])!r}, "
                 f"at row {first})")
    if spec.group:
        labels = df[spec.group]
        if labels.isna().any():
            fail(f"group column {spec.group!r} has {int(labels.isna().sum())} missing value(s) (first at row "
                 f"{int(np.argmax(labels.isna().to_numpy()))}); give every row a group")
        try:
            codes = check_groups(labels, n)
        except ValueError as exc:
            fail(f"group column {spec.group!r}: {exc}")
        n_groups = int(codes.max()) + 1
        if n_groups < 2:
            fail(f"group column {spec.group!r} puts every row in one group: nothing is independent of anything")
        if few := few_groups_message(codes, f"group column {spec.group!r}"):
            warnings.append(few)
        if n_groups == n:
            warnings.append(f"group column {spec.group!r} puts every row in a group of its own: rows are counted as "
                            "independent, as without it (but the folds and the models' validation are drawn "
                            "otherwise, and standard errors take sqrt(n / (n - 1)))")
    if spec.timestamp:
        ts = df[spec.timestamp]
        if ts.isna().any():
            fail(f"timestamp column {spec.timestamp!r} has missing values")
        if pd.api.types.is_object_dtype(ts) or pd.api.types.is_string_dtype(ts):
            # Text the reader did not take for times: ordered as text, 1/9/2020 came after
            # 1/10/2020 and a sorted table was refused (a review). Read as ISO 8601 (any mix of
            # its forms), else as numbers (epoch seconds as text), else in the first value's format.
            ts = _text_times(ts, spec.timestamp, fail)
        if not ts.is_monotonic_increasing:
            fail(f"timestamp column {spec.timestamp!r} is not in increasing order; sort the table by time")
    spec = dataclasses.replace(spec, treatment_type=treatment_type)
    roles = spec.role_columns()
    kept = [c for c in dict.fromkeys(keep) if c not in roles]
    for c in kept:
        if c not in df.columns:
            fail(f"column {c!r}, a node of the causal graph, is missing from the table")
    return ValidatedData(df[roles + kept].reset_index(drop=True), spec, warnings)


# Values beyond this break the models' sums of squares (they overflow to inf, then NaN).
MAX_ABS_VALUE = 1e100


def _text_times(ts: pd.Series, name: str, fail) -> pd.Series:
    """A timestamp column of text as times (or numbers) that order as the times they write."""
    import warnings as _warnings

    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")  # pandas' advice on mixed offsets and inferred formats: tried in turn
        for read in (lambda: pd.to_datetime(ts, format="ISO8601", utc=True), lambda: pd.to_numeric(ts),
                     lambda: pd.to_datetime(ts, utc=True), lambda: _day_first(ts)):
            try:
                return read()
            except (ValueError, TypeError, OverflowError):
                pass
    # Name the first value ISO 8601 cannot read (the first row is often fine: a review saw
    # 2020-02-30 at row 150 reported as the first row's 2020-01-01).
    unread = pd.to_datetime(ts, format="ISO8601", utc=True, errors="coerce").isna().to_numpy()
    row = int(np.argmax(unread)) if unread.any() else 0
    fail(f"timestamp column {name!r} holds text that is neither a time nor a number (first at row {row}: "
         f"{ts.iloc[row]!r}); write it as ISO 8601 (2020-01-31T12:00:00) or as numbers")


def _day_first(ts: pd.Series) -> pd.Series:
    """Dates written day first (31/1/2020), tried last. Never for year-first text, which pandas
    would read as year-day-month: an ISO date with a typo (2024-13-05) is refused, not accepted
    with every date's day and month swapped (the diff review)."""
    if ts.astype(str).str.match(r"\s*\d{4}\D").any():
        raise ValueError("year-first dates are not read day first")
    return pd.to_datetime(ts, dayfirst=True, utc=True)


def _is_written_index(name) -> bool:
    """A column that a writer's row index became: pandas' to_csv ('' or 'Unnamed: 0'), Parquet's
    '__index_level_0__'."""
    name = str(name)
    return (name == "" or name.startswith("__index_level_") or
            (name.startswith("Unnamed: ") and name.removeprefix("Unnamed: ").isdigit()))


def _looks_like_id(name, column: pd.Series) -> bool:
    """An id-like covariate: a name ending in id, or distinct integers in every row."""
    raw = str(name)
    if raw.lower() == "id" or raw.lower().endswith(("_id", " id", "-id", ".id")) or raw.endswith("Id"):
        return True
    return pd.api.types.is_integer_dtype(column) and len(column) > 50 and column.is_unique


# A declared propensity the treated share contradicts biases every effect (the residuals use it):
# below this two-sided binomial p-value the declaration is refused, below the second it is a warning.
PROPENSITY_REFUSE_P = 1e-6
PROPENSITY_WARN_P = 1e-2


# The pipeline's dataset artifact: a folder with the validated table, its resolved spec, and its
# profile (what the model card records of the data).
_TABLE_FILE, _SPEC_FILE, _PROFILE_FILE = "table.parquet", "spec.json", "profile.json"


def save_validated(data: ValidatedData, path: str) -> dict:
    """Write a validated table as the pipeline's dataset: the table, its spec and its profile
    (returned)."""
    os.makedirs(path, exist_ok=True)
    data.table.to_parquet(os.path.join(path, _TABLE_FILE), index=False)
    with open(os.path.join(path, _SPEC_FILE), "w") as f:
        f.write(data.spec.to_json())
    summary = profile(data)
    with open(os.path.join(path, _PROFILE_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def load_validated(path: str) -> ValidatedData:
    """A dataset `save_validated` wrote: the table `validate` accepted, its resolved spec and its
    warnings."""
    import pyarrow.parquet

    table = pyarrow.parquet.read_table(os.path.join(path, _TABLE_FILE)).to_pandas()
    return ValidatedData(table, load_spec(path), load_profile(path)["warnings"])


def load_spec(path: str) -> DataSpec:
    """The resolved spec of the dataset `save_validated` wrote at `path`, without reading the table."""
    with open(os.path.join(path, _SPEC_FILE)) as f:
        return DataSpec.from_json(f.read())


def profile(data: ValidatedData) -> dict:
    """What the model card records of the training data: rows, fingerprint, schema, warnings."""
    return {"rows": len(data.table), "fingerprint": fingerprint(data.table), "schema": schema(data.table),
            "warnings": list(data.warnings)}


def load_profile(path: str) -> dict:
    """The profile of the dataset `save_validated` wrote at `path`, without reading the table."""
    with open(os.path.join(path, _PROFILE_FILE)) as f:
        return json.load(f)


def fingerprint(df: pd.DataFrame) -> str:
    """sha256 of the table's column names, dtypes and values in row order."""
    h = hashlib.sha256()
    h.update(json.dumps(schema(df), sort_keys=False).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def schema(df: pd.DataFrame) -> dict[str, str]:
    return {str(c): str(t) for c, t in df.dtypes.items()}


def _preview(columns: Any, k: int = 12) -> str:
    cols = [str(c) for c in columns]
    return ", ".join(cols[:k]) + (f", ... ({len(cols)} in all)" if len(cols) > k else "")


DEMO_TREATMENT, DEMO_OUTCOME = "T", "Y"  # demo_table's: its true ATE is the effect of this column on that one


def demo_table(n: int = 5000, p: int = 10, seed: int = 0, design: str = "simple") -> tuple[pd.DataFrame, float]:
    """A simulated table with a known effect (columns x0..x{p-1}, DEMO_TREATMENT, DEMO_OUTCOME)
    and its true ATE."""
    from tauforge.kernels.datasets import make_causal_data

    data = make_causal_data(design, n=n, p=p, seed=seed)
    table = pd.DataFrame(data.X, columns=[f"x{j}" for j in range(p)])
    table[DEMO_TREATMENT] = data.T
    table[DEMO_OUTCOME] = data.Y
    return table, data.ate


# ----------------------------------------------------------------------------- KFP components
@component
def validate_data(source: str, spec: str, store: str, dataset: Output[Dataset], graph: str = "", gate: str = "{}",
                  forest_params: str = "{}", alpha: float = 0.05, estimator: str = "tauforge", n_shards: int = 1,
                  model_name: str = "", deploy: str = "", bootstrap: str = "", bootstrap_shards: int = 0):
    """Read and validate the source table; write its spec's columns and the resolved spec. The
    store and the later tasks' settings (gate, forest_params, alpha, estimator, the graph's n_shards
    and, in a graph with a deploy task, deploy, with bootstrap tasks, bootstrap and their number)
    are checked here too, so that a run that could not finish fails first, not after the
    training. With a causal graph (DOT or GML text) the spec is checked against it, its covariates
    derived from it when it names none (`graph.CausalGraph.adjusted_spec`)."""

    from tauforge.components.config import ConfigError, parse_json, redacted_uri
    from tauforge.components.data import DataSpec, read_table, save_validated, validate
    from tauforge.components.estimate import BootstrapConfig, check_bootstrap_settings, check_forest_settings
    from tauforge.components.evaluate import GateConfig
    from tauforge.components.graph import CausalGraph
    from tauforge.components.registry import check_store, check_store_location

    GateConfig.from_json(gate)
    if not 0 < float(alpha) < 1:
        raise ConfigError("alpha", f"must be in (0, 1), got {alpha}")
    forest = parse_json(forest_params, "forest_params")
    check_forest_settings(forest, int(n_shards), estimator)
    if bootstrap_shards:
        check_bootstrap_settings(BootstrapConfig.from_json(bootstrap), int(bootstrap_shards), estimator)
    check_store_location(store)
    if "://" in store and not store.startswith("file://"):
        # With the pod's own credentials: a compiled or submitted run was checked only for its
        # protocol, and a wrong bucket or missing Secret failed at publish, after the training (a review).
        check_store(store)
    if deploy:  # with the version publish would take and the champion the deploy step would read
        from tauforge.components.deploy import pipeline_deploy_spec, store_champion
        from tauforge.components.registry import ModelStore

        published = ModelStore(store).versions(model_name) if model_name else []
        pipeline_deploy_spec(deploy, model_name, max(published, default=0) + 1, store,
                             store_champion(store, model_name))
    resolved = DataSpec.from_json(spec)
    table = read_table(source, id_columns=[resolved.unit_id, resolved.group])
    if graph:
        causal_graph = CausalGraph.parse(graph)
        causal_graph.check_columns(table.columns)
        resolved = causal_graph.adjusted_spec(resolved)
        print(f"tauforge: graph {causal_graph.sha256[:12]}: {len(causal_graph.nodes)} nodes, "
              f"{len(causal_graph.edges)} edges; the covariates and controls block every back-door path", flush=True)
    data = validate(table, resolved, keep=causal_graph.observed if graph else ())
    check_forest_settings(forest, int(n_shards), estimator, len(data.spec.covariates),  # mtry, corrected columns
                          grouped=bool(data.spec.group))
    summary = save_validated(data, dataset.path)
    dataset.metadata.update(rows=summary["rows"], fingerprint=summary["fingerprint"])
    named = ", ".join(map(str, data.spec.covariates[:12])) + (", ..." if len(data.spec.covariates) > 12 else "")
    print(f"tauforge: validated {redacted_uri(source)}: {len(data.table)} rows, "
          f"{len(data.spec.covariates)} covariates ({named}), {len(data.spec.controls)} controls, "
          f"{data.spec.treatment_type} treatment", flush=True)
    for warning in data.warnings:
        print(f"tauforge: warning: {warning}", flush=True)
