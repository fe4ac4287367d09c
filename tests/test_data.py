"""The data contract: what `validate` accepts, and the message when it does not."""

import numpy as np
import pandas as pd
import pytest

from tauforge.components.config import ConfigError
from tauforge.components.data import (
    DataSpec,
    DataValidationError,
    fingerprint,
    load_validated,
    read_table,
    save_validated,
    validate,
)


def table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 3)), columns=["age", "income", "score"])
    df["treated"] = rng.binomial(1, 0.5, n).astype(float)
    df["spend"] = df["age"] + df["treated"] + rng.normal(size=n)
    df["region"] = rng.integers(0, 4, n)
    return df


def spec(**kw):
    return DataSpec(**{"outcome": "spend", "treatment": "treated", **kw})


@pytest.mark.parametrize("propensity, flagged", [(0.5, False), (0.35, True)])
def test_a_declared_propensity_the_treated_share_doubts_is_a_warning(propensity, flagged):
    # 91 of 200 treated: binomial p = 0.23 under 0.5 (a trial's ordinary luck), 0.0023 under 0.35
    # (flagged); under 0.1 it is 5e-38 and the table is refused (the invalid tables below).
    warned = [w for w in validate(table(), spec(assignment="randomized", propensity=propensity)).warnings
              if "declared propensity" in w]
    assert bool(warned) == flagged, warned


def test_valid_table_resolves_covariates_and_treatment_type():
    data = validate(table(), spec(controls=["region"]))
    assert data.spec.covariates == ["age", "income", "score"]  # every other numeric column
    assert data.spec.treatment_type == "binary" and data.spec.binary
    assert list(data.table.columns) == ["spend", "treated", "age", "income", "score", "region"]
    a = data.arrays()
    assert a["X"].shape == (200, 3) and a["W"].shape == (200, 1) and a["sample_weight"] is None


def test_weights_in_any_units_fit_the_nuisance_models_as_the_same_relative_weights():
    # A review: the pipeline passed weights as given, and the nuisance models' penalties are not
    # scale-free: a constant weight of 1e6 moved a run's ATE from 0.02 to 0.27.
    from tauforge.components.nuisance import NuisanceConfig, fit_nuisance_fold

    df = table()
    relative = np.where(df["age"] > 0, 2.0, 1.0)
    fits = [fit_nuisance_fold(validate(df.assign(w=relative * scale), spec(weight="w")), 0,
                              NuisanceConfig(folds=2), seed=0).frame for scale in (1.0, 1e6, 1e-6)]
    for other in fits[1:]:
        np.testing.assert_allclose(other[["y_hat", "t_hat"]], fits[0][["y_hat", "t_hat"]], rtol=1e-9, atol=1e-12)
    a = validate(df.assign(w=relative * 1e6), spec(weight="w")).arrays()
    assert a["sample_weight"].mean() == pytest.approx(1.0)


def test_a_constant_covariate_or_control_is_accepted_with_a_warning_that_travels_with_the_dataset(tmp_path):
    # An intercept column (EconML's IHDP covariates start with one) or a segment filtered to one
    # value: it can never split, and scikit-learn, EconML and grf accept it.
    df = table(n=500).assign(intercept=1.0, segment=3)
    data = validate(df, spec(covariates=["intercept", "age"], controls=["segment"]))
    assert data.spec.covariates == ["intercept", "age"]
    assert data.warnings == ["covariate 'intercept' is constant (1.0 in every row): it can never split and "
                             "carries no information",
                             "control 'segment' is constant (3 in every row): it can never split and carries no "
                             "information"]
    save_validated(data, str(tmp_path / "dataset"))
    assert load_validated(str(tmp_path / "dataset")).warnings == data.warnings
    assert validate(table(n=500), spec()).warnings == []  # SMALL_DATA_ROWS: 200 rows are a warning of their own
    with pytest.raises(DataValidationError, match="column 'treated' is constant"):  # the treatment still must vary
        validate(df.assign(treated=1.0), spec())


def test_continuous_treatment_is_detected():
    df = table(n=500)
    df["dose"] = np.random.default_rng(1).uniform(0, 3, len(df))
    data = validate(df, DataSpec(outcome="spend", treatment="dose", covariates=["age", "income"]))
    assert data.spec.treatment_type == "continuous" and data.warnings == []


def test_what_auto_decides_quietly_is_said_in_a_warning():
    # Three levels: continuous, which changes the estimand; a string column the default
    # covariates leave out. (Two arms coded otherwise than 0/1 are refused: below.)
    df = table(n=500).assign(city="x")
    arms, shown = [0.0, 1.0, 2.0], "3 values (0, 1, 2)"
    data = validate(df.assign(treated=np.resize(arms, len(df))), spec())
    assert data.spec.treatment_type == "continuous"
    assert any(f"treatment 'treated' takes {shown} and is taken as continuous" in w for w in data.warnings)
    assert validate(df.assign(treated=np.resize(arms, len(df))), spec(treatment_type="continuous")).warnings \
        == ["column(s) city are not numeric and were left out of the covariates; encode them as numbers, or "
            "name the covariates, to use them"]
    assert validate(df, spec(covariates=["age"])).warnings == []  # named covariates: nothing was left out


def test_default_covariates_leave_out_a_written_index_and_name_id_like_columns():
    # A data review: pandas' to_csv index ('' or 'Unnamed: 0') and a customer id were taken as
    # covariates, the id took 0.29 of the forest's importance, and nothing said so.
    df = table().assign(customer_id=np.arange(200) * 7 + 1000)
    df.insert(0, "Unnamed: 0", np.arange(200))
    data = validate(df, spec(controls=["region"]))
    assert data.spec.covariates == ["age", "income", "score", "customer_id"]
    assert any("'Unnamed: 0' look like a written row index and were left out" in w for w in data.warnings)
    assert any("covariate(s) customer_id, picked by default, look like ids" in w for w in data.warnings)
    named = validate(df, spec(covariates=["age", "customer_id"], controls=["region"]))
    assert not any("index" in w or "ids" in w for w in named.warnings)  # what the user named is not second-guessed


def test_a_covariate_named_as_servings_unit_id_key_is_refused_and_the_unit_id_column_is_not():
    # A user review: a covariate 'unit_id' published, then no keyed request could score it (the
    # server reads that key as the routing unit id, and V2 metadata advertised it as an input).
    df = table().assign(unit_id=np.arange(200) + 10)
    with pytest.raises(DataValidationError, match="covariate 'unit_id' \\(picked as a covariate by default\\): "
                                                  "serving reads a request's unit id from the key 'unit_id'"):
        validate(df, spec(controls=["region"]))
    with pytest.raises(DataValidationError, match="declare it as the unit id .* else rename it$"):
        validate(df, spec(covariates=["age", "unit_id"], controls=["region"]))
    declared = validate(df, spec(controls=["region"], unit_id="unit_id"))
    assert "unit_id" not in declared.spec.covariates and declared.spec.unit_id == "unit_id"


@pytest.mark.parametrize("change, kw, message", [
    (lambda d: d.drop(columns="spend"), {}, "outcome column 'spend' is missing"),
    (lambda d: d, {"covariates": ["age", "height"]}, "covariates column 'height' is missing"),
    (lambda d: d.rename(columns={"treated": " treated"}), {},
     "treatment column 'treated' is missing from the table; it has ' treated', with spaces: strip the header's"),
    (lambda d: d.assign(spend=d.spend.where(d.index != 7)), {}, "column 'spend' has 1 NaN"),
    (lambda d: d.assign(age=d.age.where(d.index != 3, np.inf)), {}, "column 'age' has 1 inf"),
    (lambda d: d.assign(treated=d.index % 3), {"treatment_type": "binary"},
     "treatment column 'treated' is declared binary but takes 3 values (0, 1, 2)"),
    (lambda d: d.assign(treated=(d.index < 5).astype(float)), {}, "has 5 row(s) with value 1"),
    # Two arms coded 1/2 (or -1/+1) became a continuous dose: an effect of the wrong sign or half size.
    (lambda d: d.assign(treated=d.treated + 1), {}, "treatment column 'treated' takes two values (1, 2): recode"),
    (lambda d: d.assign(w=np.where(d.treated == 1, 0.0, 1.0)), {"weight": "w"},
     "weight column 'w' is positive in 0 row(s) with treatment 1"),
    (lambda d: d.assign(age=d.age.where(d.index != 4, 1e300)), {},
     "column 'age' has 1 value(s) beyond +-1e+100 (first at row 4, 1e+300); rescale it (picked as a covariate by "
     "default"),
    # The outcome enters the forest's float32 leaf moments: at 1e39 the run's ATE was NaN and kfp
    # failed to write it, with a traceback.
    (lambda d: d.assign(spend=d.spend.where(d.index != 5, 1e39)), {},
     "outcome 'spend' and treatment 'treated' are too large for the forest's leaf moments (float32): the largest "
     "|outcome 'spend'| is 1e+39"),
    (lambda d: d.assign(spend=2.0), {}, "column 'spend' is constant"),
    (lambda d: d.assign(city="x"), {"covariates": ["age", "city"]}, "column 'city' is not numeric"),
    # A review: the string was read as its letters (columns 'a' and 'g' ...), and the imaginary
    # part of a complex column was dropped with a NumPy warning.
    (lambda d: d, {"covariates": "age"}, "covariates must be a list of column names, got the string 'age'"),
    (lambda d: d.assign(z=d.age + 1j), {"covariates": ["age", "z"]}, "column 'z' holds complex numbers"),
    (lambda d: d, {"covariates": ["age"], "controls": ["age"]}, "column 'age' is given two roles"),
    (lambda d: d.assign(uid=d.index % 10), {"unit_id": "uid"}, "unit_id column 'uid' has duplicate ids"),
    (lambda d: d.assign(uid=d.index.astype(str).where(d.index != 6)), {"unit_id": "uid"},
     "unit_id column 'uid' has 1 missing id(s) (first at row 6); every row needs its unit's id"),
    (lambda d: d.assign(ts=-d.index), {"timestamp": "ts"}, "timestamp column 'ts' is not in increasing order"),
    (lambda d: d.assign(ts=[f"{1 + i % 12}/1/{2020 - i // 12}" for i in d.index]), {"timestamp": "ts"},
     "timestamp column 'ts' is not in increasing order"),
    (lambda d: d.assign(ts="soon"), {"timestamp": "ts"},
     "timestamp column 'ts' holds text that is neither a time nor a number (first at row 0: 'soon')"),
    (lambda d: d.assign(ts=[f"2020-02-{1 + i % 28:02d}" if i != 150 else "2020-02-30" for i in d.index]),
     {"timestamp": "ts"}, "neither a time nor a number (first at row 150: '2020-02-30')"),
    # Read day first, 2020-13-05 is a date (13 May) and every other date swaps its day and month.
    (lambda d: d.assign(ts=[f"{2000 + i // 12}-{1 + i % 12:02d}-05" if i != 150 else "2012-13-05" for i in d.index]),
     {"timestamp": "ts"}, "neither a time nor a number (first at row 150: '2012-13-05')"),
    (lambda d: d, {"assignment": "randomized"}, "needs the known propensity"),
    (lambda d: d.assign(treated=d.age), {"assignment": "randomized", "propensity": 0.5}, "needs a binary treatment"),
    (lambda d: d, {"assignment": "randomized", "propensity": 0.1},
     "assignment 'randomized': 'treated' is 1 in 91 of 200 rows (45.5%), against the declared propensity 0.1"),
    (lambda d: d.assign(w=0.0), {"weight": "w"}, "weight column 'w' is zero in every row"),
    (lambda d: d.assign(notes=None), {"covariates": ["age", "notes"]}, "column 'notes' is empty: missing in every row"),
    (lambda d: d[["treated", "spend"]].assign(**{"Unnamed: 0": np.arange(len(d))}), {},
     "no other numeric column but 'Unnamed: 0', which looks like a written row index"),
    # A review: a 0/1 column one rounding error off became a continuous dose without a word.
    (lambda d: d.assign(treated=d.treated.where(d.index != 3, 0.1 * 3 / 0.3)), {},
     "treatment column 'treated' is 0/1 up to rounding (row 3 holds 1.0000000000000002): round it to 0/1 first"),
    # A review: the message named neither the cell nor, for numbers stored as objects, the cure.
    (lambda d: d.assign(age=d.age.astype(object).where(d.index != 9, "missing")), {"covariates": ["age"]},
     "column 'age' is not numeric (dtype object): row 9 holds 'missing', which is not a number"),
    (lambda d: d.assign(age=d.age.astype(object)), {"covariates": ["age"]},
     "column 'age' holds numbers as object; convert it first"),
    (lambda d: d.assign(treated=d.treated.astype(bool).astype(object).where(d.index != 4)), {},
     "column 'treated' has 1 missing value(s) (first at row 4); drop or impute them"),
    (lambda d: d.assign(uid=np.arange(len(d)) % 10), {"unit_id": "uid"},
     "unit_id column 'uid' has duplicate ids (first: 0, at row 10)"),
    # A spec edited as JSON: a TypeError from inside validate before.
    (lambda d: d, {"min_rows_per_arm": "10"}, "min_rows_per_arm must be a whole number (0 or more), got '10'"),
    (lambda d: d, {"min_rows_per_arm": True}, "min_rows_per_arm must be a whole number (0 or more), got True"),
    (lambda d: d, {"assignment": "randomized", "propensity": "0.5"}, "propensity must be a number in (0, 1)"),
    (lambda d: d, {"propensity": True}, "propensity must be a number in (0, 1), got True"),
    (lambda d: d[["treated", "spend"]].assign(price=[f"{1000 + i:,}" for i in range(len(d))]), {},
     "no other numeric column; the columns left out ('price') are not numeric: encode them as numbers"),
    (lambda d: d.iloc[:0], {"min_rows_per_arm": 0}, "the table has 0 rows"),
    (lambda d: d.iloc[:0].astype(object), {}, "the table has 0 rows"),  # a CSV of a header only: no numeric column
    # A propensity of 0 or 1 is no randomization: named as such, not as a binomial test's p = 0.
    (lambda d: d, {"assignment": "randomized", "propensity": 0.0},
     "assignment 'randomized' needs the known propensity in (0, 1), got 0.0"),
    (lambda d: d, {"assignment": "randomized", "propensity": 1.0},
     "assignment 'randomized' needs the known propensity in (0, 1), got 1.0"),
    (lambda d: d, {"instrument": "income"}, "instrument: instrumental-variable estimation is not supported yet"),
    (lambda d: d, {"controls": "region"}, "controls must be a list of column names, got the string 'region'"),
    (lambda d: d, {"covariates": ["age", "age"]}, "covariates column 'age' is listed twice; list it once"),
    (lambda d: d.assign(age=d.age.where(d.index != 4, -1e300)), {},
     "column 'age' has 1 value(s) beyond +-1e+100 (first at row 4, -1e+300)"),
    (lambda d: d.assign(w=np.where(d.index == 5, -0.5, 1.0)), {"weight": "w"}, "weight column 'w' has negative values"),
    (lambda d: d.assign(g=1), {"group": "g"}, "group column 'g' puts every row in one group"),
    (lambda d: d.assign(ts=pd.Series(np.arange(len(d)), dtype=float).where(d.index != 3)), {"timestamp": "ts"},
     "timestamp column 'ts' has missing values"),
])
def test_invalid_tables_name_the_column_and_the_problem(change, kw, message):
    with pytest.raises(DataValidationError) as err:
        validate(change(table()), spec(**kw))
    assert message in str(err.value)


def test_a_table_exactly_at_each_limit_is_accepted():
    # The limits are inclusive: min_rows_per_arm rows in an arm, values of +-1e100, five treatment
    # levels still said in a warning (six are a dose), rows at the same time (a panel's).
    df = table()
    at_limit = df.assign(treated=(df.index < 10).astype(float), age=df.age.where(df.index != 4, -1e100),
                         income=df.income.where(df.index != 5, 1e100), ts=df.index // 10)
    assert validate(at_limit, spec(timestamp="ts")).spec.binary
    five, six = (validate(df.assign(treated=df.index % k), spec()).warnings for k in (5, 6))
    assert any("treatment 'treated' takes 5 values (0, 1, 2, 3, 4) and is taken as continuous" in w for w in five)
    assert not any("taken as continuous" in w for w in six)


def test_a_dose_between_0_and_1_is_continuous_not_0_1_up_to_rounding():
    # Every value rounds to 0 or 1, but only values within rounding error of them are a 0/1 column.
    df = table().assign(share=np.random.default_rng(2).uniform(0, 1, 200))
    assert validate(df, spec(treatment="share", covariates=["age"])).spec.treatment_type == "continuous"
    # Nor is a dose on a tiny scale, whose values all round to 0 (the diff review: it was refused).
    df = table().assign(molar=np.random.default_rng(2).uniform(0, 8e-10, 200))
    assert validate(df, spec(treatment="molar", covariates=["age"])).spec.treatment_type == "continuous"


def test_a_group_per_row_is_said_in_a_warning():
    data = validate(table().assign(g=np.arange(200)), spec(group="g", covariates=["age"]))
    assert any("group column 'g' puts every row in a group of its own" in w for w in data.warnings)


def test_timestamps_written_as_text_are_ordered_as_dates():
    # A review: 1/9/2020 then 1/10/2020 was refused as unsorted, compared as text.
    days = pd.date_range("2020-01-01", periods=len(table()), freq="D")
    # ISO 8601 as Python writes it: datetime.isoformat() drops the microseconds when they are 0,
    # and a date alone may come first (a review of the first version, which took the first
    # value's format for all); epoch seconds as text.
    iso = [(d + pd.Timedelta(microseconds=500_000 * (i % 2))).to_pydatetime().isoformat() for i, d in enumerate(days)]
    for written in (days.strftime("%m/%d/%Y"), days.strftime("%-m/%-d/%Y"), days.strftime("%Y-%m-%d"), iso,
                    [f"{t}+00:00" for t in iso], ["2019-12-31", *days[1:].strftime("%Y-%m-%d %H:%M:%S")],
                    [str(int(d.timestamp())) for d in days]):
        assert validate(table().assign(ts=list(written)), spec(timestamp="ts")).spec.timestamp == "ts"


def test_day_first_dates_are_read_when_month_first_cannot_be():
    # A review: sorted 13/1/2020 (13 January) was refused as "neither a time nor a number".
    days = pd.date_range("2020-01-01", periods=len(table()), freq="D")
    written = [f"{d.day}/{d.month}/{d.year}" for d in days]
    assert validate(table().assign(ts=written), spec(timestamp="ts")).spec.timestamp == "ts"
    with pytest.raises(DataValidationError, match="timestamp column 'ts' is not in increasing order"):
        validate(table().assign(ts=written[::-1]), spec(timestamp="ts"))


def test_a_csv_that_is_not_utf8_or_not_comma_separated_is_refused_with_the_cure(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("x,größe\n1,2\n".encode("latin-1"))
    with pytest.raises(DataValidationError, match=r"latin1.csv': it is not UTF-8 .*save it as UTF-8 \(or Parquet\)"):
        read_table(str(tmp_path / "latin1.csv"))
    # A value, not the header: read as bytes where it can be (refused later if the column is used
    # as a number, naming the cell), but an id column is text, and its error said only "invalid UTF8".
    (tmp_path / "ids.csv").write_bytes("x,T,Y,site\n1,0,2,café\n".encode("latin-1"))
    with pytest.raises(DataValidationError, match=r"ids.csv': it is not UTF-8 \(In CSV column #3: .*invalid UTF8 "
                                                  r"data\); save it as UTF-8 \(or Parquet\)"):
        read_table(str(tmp_path / "ids.csv"), id_columns=["site"])
    # Decimal commas made the rows longer than the header, and pyarrow's message was all it said.
    (tmp_path / "semi.csv").write_text("x;y;T\n0;0;0,5\n1;2;1,5\n")
    with pytest.raises(DataValidationError, match=r"separated by ';' or tabs, and tauforge reads commas"):
        read_table(str(tmp_path / "semi.csv"))
    # Without decimal commas such a file reads as one column (its header): named, as both separators.
    for name, sep in (("semi1.csv", ";"), ("tabs.csv", "\t")):
        (tmp_path / name).write_text(f"x{sep}y{sep}T\n0{sep}1{sep}0\n1{sep}2{sep}1\n")
        with pytest.raises(DataValidationError, match=r"reads as one column .*separated by ';' or tabs"):
            read_table(str(tmp_path / name))


def test_a_csvs_unquoted_NA_is_missing_where_the_file_quotes_its_text_and_a_name_where_it_does_not(tmp_path):
    # A review: R's write.csv writes a missing value as NA unquoted beside quoted names; the 40
    # missing households became one household named 'NA', which moved the folds and the clustered
    # errors silently. Quoted, "NA" is a name (Namibia's code). A file that quotes nothing
    # (pandas' to_csv, whose missing value is an empty cell) keeps NA as a name: the diff review
    # saw outcomes of the unit NA dropped, and an R file refused, under one rule for both.
    import csv

    df = table().assign(hh=[str(i // 5) for i in range(200)])
    df.loc[df.index % 5 == 0, "hh"] = None
    df.to_csv(tmp_path / "r.csv", index=False, na_rep="NA", quoting=csv.QUOTE_NONNUMERIC)
    (tmp_path / "r.csv").write_text((tmp_path / "r.csv").read_text().replace('"NA"', "NA"))  # R leaves NA bare
    with pytest.raises(DataValidationError, match=r"group column 'hh' has 40 missing value\(s\) \(first at row 0"):
        validate(read_table(str(tmp_path / "r.csv"), id_columns=["hh"]), spec(group="hh"))
    (tmp_path / "quoted.csv").write_text('hh,x\n"NA",1\nNA,2\n"US",3\n')
    (tmp_path / "plain.csv").write_text("hh,x\nNA,1\n,2\nUS,3\n")
    for name in ("quoted.csv", "plain.csv"):
        hh = read_table(str(tmp_path / name), id_columns=["hh"])["hh"]
        assert [None if pd.isna(v) else v for v in hh] == ["NA", None, "US"], name


def test_duplicate_column_names_are_refused():
    df = table()
    df = pd.concat([df, df[["age"]]], axis=1)
    with pytest.raises(DataValidationError, match="column 'age' appears more than once"):
        validate(df, spec())


def test_parquet_and_csv_read_alike(tmp_path):
    df = table()
    df.to_parquet(tmp_path / "t.parquet", index=False)
    df.to_csv(tmp_path / "t.csv", index=False)
    a, b = read_table(str(tmp_path / "t.parquet")), read_table(str(tmp_path / "t.csv"))
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    with pytest.raises(DataValidationError, match="does not exist"):
        read_table(str(tmp_path / "missing.parquet"))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataValidationError, match="cannot read"):
        read_table(str(tmp_path / "junk.parquet"))
    df.to_csv(tmp_path / "t.txt", index=False)
    with pytest.raises(DataValidationError, match=r"as Parquet \(a CSV file's name ends in .csv\)"):
        read_table(str(tmp_path / "t.txt"))


def test_a_folder_of_parquet_files_reads_in_numbered_order_with_hive_partitions_as_numbers(tmp_path):
    # A review: part.10 was read before part.2 (a table sorted by time was refused as unsorted),
    # a hive partition column of integers came back as a category ("not numeric"), Parquet's
    # repeated column names gave pyarrow's internal error, and decimals were "not numeric".
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    df = table(n=240).assign(ts=pd.date_range("2026-01-01", periods=240, freq="h"))
    (tmp_path / "parts").mkdir()
    for k in range(12):
        df.iloc[20 * k:20 * (k + 1)].to_parquet(tmp_path / "parts" / f"part.{k}.parquet", index=False)
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    parts = read_table(str(tmp_path / "parts"))
    pd.testing.assert_frame_equal(parts, df)
    validate(parts, spec(timestamp="ts"))
    df.to_parquet(tmp_path / "hive", partition_cols=["region"], index=False)
    hive = read_table(str(tmp_path / "hive"))
    assert hive["region"].dtype.kind == "i" and sorted(hive["region"].unique()) == [0, 1, 2, 3]
    assert "region" in validate(hive, spec()).spec.covariates
    pq.write_table(pa.table([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["x0", "x0"]), tmp_path / "dup.parquet")
    with pytest.raises(DataValidationError, match="column 'x0' appears more than once"):
        read_table(str(tmp_path / "dup.parquet"))
    money = pa.array([decimal.Decimal("1.25"), decimal.Decimal("-3.50")], type=pa.decimal128(9, 2))
    pq.write_table(pa.table({"spend": money}), tmp_path / "money.parquet")
    assert read_table(str(tmp_path / "money.parquet"))["spend"].tolist() == [1.25, -3.5]
    # Files of one folder with other columns (a user review: a file without 'score' read as 20
    # missing values of it, and a column only a later file had was dropped without a word).
    for name, frame in (("lacks", df.drop(columns="score")), ("adds", df.assign(extra=1.0))):
        (tmp_path / name).mkdir()
        df.iloc[:20].to_parquet(tmp_path / name / "part.0.parquet", index=False)
        frame.iloc[20:40].to_parquet(tmp_path / name / "part.1.parquet", index=False)
    with pytest.raises(DataValidationError, match="the files of .* hold different columns: '.*part.1.parquet' lacks "
                                                  "'score' against '.*part.0.parquet'; write every file"):
        read_table(str(tmp_path / "lacks"))
    with pytest.raises(DataValidationError, match="part.1.parquet' has 'extra' against"):
        read_table(str(tmp_path / "adds"))


def test_a_csvs_id_columns_are_read_as_written(tmp_path):
    # Inferred as numbers, 007 and 7 would be one id (a false duplicate) and 007 would no longer
    # meet the "007" a request or a Parquet file of strings gives.
    df = table().assign(customer=[f"{i:03d}" for i in range(100)] + [str(i) for i in range(100)])  # 007 and 7
    df.to_csv(tmp_path / "t.csv", index=False)
    read = read_table(str(tmp_path / "t.csv"), id_columns=["customer", "not_a_column"])
    assert read["customer"].tolist() == df["customer"].tolist()
    validate(read, spec(unit_id="customer"))
    with pytest.raises(DataValidationError, match="duplicate ids"):  # what inferring numbers made of them
        validate(read_table(str(tmp_path / "t.csv")), spec(unit_id="customer"))
    # An empty cell is a missing id or group, as Parquet's null is: read as the text '', a CSV's
    # empty group cells became one group, and the run published (a review).
    df.loc[7, "customer"] = None
    df.assign(store=np.where(np.arange(200) % 9 == 3, None, "s1")).to_csv(tmp_path / "gaps.csv", index=False)
    gaps = read_table(str(tmp_path / "gaps.csv"), id_columns=["customer", "store"])
    with pytest.raises(DataValidationError, match=r"unit_id column 'customer' has 1 missing id\(s\) \(first at row 7"):
        validate(gaps, spec(unit_id="customer"))
    with pytest.raises(DataValidationError, match=r"group column 'store' has 22 missing value\(s\) \(first at row 3"):
        validate(gaps, spec(group="store"))


def test_fingerprint_changes_with_any_value_and_not_otherwise():
    df = table()
    assert fingerprint(df) == fingerprint(df.copy())
    changed = df.copy()
    changed.loc[5, "income"] += 1e-9
    assert fingerprint(changed) != fingerprint(df)
    assert fingerprint(df.rename(columns={"age": "years"})) != fingerprint(df)


def test_spec_round_trips_through_json_and_rejects_unknown_fields():
    s = spec(controls=["region"], unit_id="uid")
    assert DataSpec.from_json(s.to_json()) == s
    with pytest.raises(ConfigError, match="unknown DataSpec setting"):
        DataSpec.from_json('{"outcome": "y", "treatment": "t", "colour": "red"}')
