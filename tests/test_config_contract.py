"""The configuration contract at its edges: each check refuses the first value past its bound,
names the setting at fault, and accepts the bound itself (from a mutation test of the checks)."""
# ruff: noqa: B023  (each lambda in a loop is called at once, by `refused`, in the same iteration)

import json

import pytest

from tauforge.components.config import ConfigError, check_no_credentials, check_secret_name, from_json
from tauforge.components.data import DataSpec
from tauforge.components.deploy import DeploySpec
from tauforge.components.estimate import BootstrapConfig
from tauforge.components.evaluate import GateConfig
from tauforge.components.nuisance import NuisanceConfig
from tauforge.pipelines.config import ClusterConfig, TrainingConfig

SPEC = DataSpec(outcome="y", treatment="t", covariates=["x0", "x1"])


def refused(make, field):
    """The ConfigError `make()` raises, which must name `field`."""
    with pytest.raises(ConfigError) as raised:
        make()
    assert raised.value.field == field, (raised.value.field, str(raised.value))
    return raised.value


@pytest.mark.parametrize("uri", [
    "s3://AKIAKEY@bucket/store",  # a user name alone (a token) is a credential too
    "gs://KEY:S3CRET@bucket/store",  # every scheme, not only s3:// and http(s)://
    "abfs://account:S3CRET@container/store",
    "s3://KEY:12ab/S3CRET@bucket/store",  # a secret holding '/' that starts with digits is no port
    # ... nor one of digits alone before its first '/': a bucket takes no port (it passed, and the
    # store's error printed the secret whole)
    "s3://AKIAEXAMPLE:1/S3CRETwJalrXUtnFEMIK7MDENGbPxRfiCY@bucket/store",
    "gs://KEY:42/S3CRET@bucket/store",
])
def test_credentials_are_refused_in_every_scheme_and_form(uri):
    assert "S3CRET" not in str(refused(lambda: check_no_credentials(uri, "store"), "store"))


@pytest.mark.parametrize("uri", [
    "http://host:8080/data/a@b.parquet",  # host:port, then a path holding '@'
    "s3://bucket/data/a@b.parquet",
    "/local/a@b.parquet",
])
def test_a_port_or_a_path_holding_an_at_sign_is_no_credential(uri):
    assert check_no_credentials(uri, "data") == uri


@pytest.mark.parametrize("text", ["[]", "null", '"outcome"', "3"])
def test_settings_json_that_is_not_an_object_is_refused_as_such(text):
    error = refused(lambda: from_json(DataSpec, text, "spec"), "spec")
    assert "must be a JSON object" in error.problem


@pytest.mark.parametrize("value, accepted", [
    ("512Mi", True), ("1.5Gi", True), ("1G", True),
    ("512m", False),  # Kubernetes reads 'm' as milli: half a byte, never what was meant
    ("2Gi ", False), ("-1Gi", False), ("0Gi", False),
])
def test_a_predictors_memory_takes_kubernetes_byte_quantities_only(value, accepted):
    make = lambda: DeploySpec(model="m", version=1, store="s3://b/s", memory=value)  # noqa: E731
    if accepted:
        make()
    else:
        refused(make, "memory")


def test_a_secret_name_is_a_lower_case_dns_subdomain_of_at_most_253_characters():
    check_secret_name("a" * 253, "store_secret")
    check_secret_name("store-creds.team-1", "store_secret")
    for name in ("a" * 254, "Store-Creds", "creds-", "-creds", ""):
        refused(lambda: check_secret_name(name, "store_secret"), "store_secret")
    refused(lambda: ClusterConfig(store_secret="Store-Creds"), "store_secret")
    refused(lambda: DeploySpec(model="m", version=1, store="s3://b/s", store_secret="Store-Creds"), "store_secret")


def test_trees_are_a_positive_even_number():
    TrainingConfig(spec=SPEC, trees=2, n_shards=1)
    for trees in (0, 7, -2, 4.0, True):
        refused(lambda: TrainingConfig(spec=SPEC, trees=trees, n_shards=1), "trees")


def test_the_device_is_auto_cpu_cuda_or_a_numbered_cuda_device_and_not_a_forest_option():
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert TrainingConfig(spec=SPEC, device=device).device == device
    for device in ("gpu", "CPU", "tpu:0"):
        refused(lambda: TrainingConfig(spec=SPEC, device=device), "device")
    for reserved in ("device", "n_estimators"):  # each has its own setting
        error = refused(lambda: TrainingConfig(spec=SPEC, forest_options={reserved: "cpu"}), "forest_options")
        assert reserved in error.problem


def test_the_seed_is_numpys_range_and_alpha_is_open_at_both_ends():
    TrainingConfig(spec=SPEC, seed=0)
    TrainingConfig(spec=SPEC, seed=2**32 - 1)
    for seed in (-1, 2**32, 1.0, True):
        refused(lambda: TrainingConfig(spec=SPEC, seed=seed), "seed")
    TrainingConfig(spec=SPEC, alpha=0.01)
    for alpha in (0, 0.0, 1, 1.5, -0.1):
        refused(lambda: TrainingConfig(spec=SPEC, alpha=alpha), "alpha")


def test_econml_takes_trees_in_fours_one_shard_and_no_full_bootstrap():
    econml = dict(spec=SPEC, estimator="econml", n_shards=1)
    TrainingConfig(**{**econml, "trees": 1000})
    refused(lambda: TrainingConfig(**{**econml, "trees": 1002}), "trees")  # even, not a multiple of 4
    refused(lambda: TrainingConfig(**{**econml, "trees": 1000, "n_shards": 2}), "n_shards")
    refused(lambda: TrainingConfig(**{**econml, "trees": 1000, "bootstrap": BootstrapConfig(n_bootstrap=10)}),
            "n_bootstrap")


def test_shards_and_bootstrap_shards_run_from_1_to_their_bags_and_replicates():
    TrainingConfig(spec=SPEC, trees=1000, n_shards=125)  # 125 little bags of 8
    for shards in (0, 126):
        error = refused(lambda: TrainingConfig(spec=SPEC, trees=1000, n_shards=shards), "n_shards")
        assert "between 1 and 125" in error.problem
    boot = BootstrapConfig(n_bootstrap=10)
    TrainingConfig(spec=SPEC, bootstrap=boot, bootstrap_shards=10)
    for shards in (0, 11):
        refused(lambda: TrainingConfig(spec=SPEC, bootstrap=boot, bootstrap_shards=shards), "bootstrap_shards")


def test_a_weight_column_needs_nuisance_models_whose_fit_takes_sample_weight():
    weighted = DataSpec(outcome="y", treatment="t", covariates=["x0"], weight="w")
    knn = NuisanceConfig(model_y="sklearn.neighbors.KNeighborsRegressor")
    refused(lambda: TrainingConfig(spec=weighted, nuisance=knn), "model_y")
    TrainingConfig(spec=SPEC, nuisance=knn)  # no weight column: any regressor


def test_cluster_counts_and_images_are_checked():
    ClusterConfig(gpus_per_shard=0, shard_retries=0)
    ClusterConfig(shard_retries=10)
    refused(lambda: ClusterConfig(gpus_per_shard=-1), "gpus_per_shard")
    for retries in (-1, 11):
        refused(lambda: ClusterConfig(shard_retries=retries), "shard_retries")
    refused(lambda: ClusterConfig(gpus_per_shard=1, cuda_image="bad image"), "cuda_image")


def test_gpu_placement_takes_kubernetes_labels_and_taint_effects():
    gpu = dict(gpus_per_shard=1)
    ClusterConfig(**gpu, gpu_node_selector=(("cloud.google.com/gke-accelerator", "a" * 63),))
    for pair in (("pool", "a" * 64), ("pool", ""), ("Example.com/pool", "a")):
        refused(lambda: ClusterConfig(**gpu, gpu_node_selector=(pair,)), "gpu_node_selector")
    ClusterConfig(**gpu, gpu_tolerations=(("nvidia.com/gpu", "", "NoSchedule"), ("dedicated", "gpu", "")))
    for toleration in (("nvidia.com/gpu", "", "Never"), ("nvidia.com/gpu", "a" * 64, "")):
        refused(lambda: ClusterConfig(**gpu, gpu_tolerations=(toleration,)), "gpu_tolerations")
    refused(lambda: ClusterConfig(**gpu, accelerator_type="NVIDIA.com/gpu"), "accelerator_type")


def test_a_store_secret_needs_keys_that_are_environment_variable_names():
    ClusterConfig(store_secret="s", store_secret_keys=("AWS_ACCESS_KEY_ID", "_X1"))
    refused(lambda: ClusterConfig(store_secret="s", store_secret_keys=()), "store_secret_keys")
    refused(lambda: ClusterConfig(store_secret="s", store_secret_keys=("1KEY",)), "store_secret_keys")


@pytest.mark.parametrize("key", ["min_placebo_pvalue", "min_refuter_pvalue", "min_graph_pvalue",
                                 "min_robustness_value"])
def test_a_minimum_p_value_or_robustness_value_is_in_0_to_below_1(key):
    assert getattr(GateConfig.from_dict({key: "0"}), key) == 0.0
    assert getattr(GateConfig.from_dict({key: "0.999"}), key) == 0.999
    for value in ("1", "-0.01"):
        refused(lambda: GateConfig.from_dict({key: value}), key)


def test_the_gates_share_smd_and_r2_thresholds_keep_to_their_statistics_ranges():
    assert GateConfig.from_dict({"max_share_outside_overlap": "1"}).max_share_outside_overlap == 1.0
    refused(lambda: GateConfig.from_dict({"max_share_outside_overlap": "1.01"}), "max_share_outside_overlap")
    assert GateConfig.from_dict({"max_abs_smd": "0"}).max_abs_smd == 0.0
    refused(lambda: GateConfig.from_dict({"max_abs_smd": "-0.01"}), "max_abs_smd")
    assert GateConfig.from_dict({"min_outcome_r2": "-5"}).min_outcome_r2 == -5.0  # R^2 has no lower bound
    refused(lambda: GateConfig.from_dict({"min_outcome_r2": "1.01"}), "min_outcome_r2")
    same = GateConfig.from_dict({"min_outcome_r2": "0.5", "max_outcome_r2": "0.5"})  # a model can pass both
    assert same.min_outcome_r2 == same.max_outcome_r2 == 0.5


@pytest.mark.parametrize("given, flag", [(True, True), ("1", True), ("TRUE", True), ("yes", True),
                                         (False, False), ("0", False), ("false", False), ("no", False)])
def test_require_settings_read_each_spelling_of_true_and_false(given, flag):
    gate = GateConfig.from_dict({"require_significant_ate": given, "require_heterogeneity": given})
    assert gate.require_significant_ate is flag and gate.require_heterogeneity is flag


def test_a_null_or_off_threshold_switches_its_check_off_and_the_gates_defaults_are_documented_ones():
    assert GateConfig.from_json('{"min_placebo_pvalue": null, "max_abs_smd": "OFF"}') == GateConfig(
        min_placebo_pvalue=None, max_abs_smd=None)
    assert GateConfig() == GateConfig(max_share_outside_overlap=0.10, min_placebo_pvalue=0.01,
                                      min_refuter_pvalue=0.01, min_robustness_value=None, max_abs_smd=None,
                                      min_outcome_r2=None, max_outcome_r2=0.999, require_significant_ate=False,
                                      require_heterogeneity=False, min_graph_pvalue=0.01)


@pytest.mark.parametrize("settings", [
    GateConfig(min_outcome_r2=-1.0, max_outcome_r2=0.9, require_heterogeneity=True, min_graph_pvalue=None),
    NuisanceConfig(model_y="tauforge", model_t="auto", folds=7),
    BootstrapConfig(n_bootstrap=20, trees=50, interval="percentile", nuisance=False),
])
def test_settings_round_trip_through_their_json_with_every_field(settings):
    assert type(settings).from_json(settings.to_json()) == settings
    assert list(json.loads(settings.to_json())) == sorted(f for f in settings.__dataclass_fields__)


def test_folds_are_an_integer_of_at_least_2_and_models_are_given_by_name():
    NuisanceConfig(folds=2)
    for folds in (1, 0, True, 2.0):
        refused(lambda: NuisanceConfig(folds=folds), "folds")
    from sklearn.linear_model import LinearRegression

    refused(lambda: NuisanceConfig(model_t=LinearRegression()), "model_t")


def deploy(**kw):
    return DeploySpec(**{"model": "m", "version": 1, "store": "s3://b/s", **kw})


def test_deploy_names_and_namespaces_are_lower_case_dns_labels_of_their_lengths():
    deploy(name="a" * 45, namespace="a" * 63)
    refused(lambda: deploy(name="a" * 46), "name")
    refused(lambda: deploy(name="Uplift"), "name")
    refused(lambda: deploy(model="Uplift"), "model")  # the default name is the model's
    refused(lambda: deploy(namespace="a" * 64), "namespace")
    refused(lambda: deploy(namespace="team-"), "namespace")
    refused(lambda: deploy(service_account="Serving"), "service_account")
    # A DNS-1035 label starts with a letter and ends with a letter or digit (a mutation test: each
    # end passed): KServe's Service `<name>-predictor` of "1uplift" or "uplift-" is refused.
    deploy(name="u", namespace="1team")  # a namespace is DNS-1123: it may start with a digit
    for name in ("1uplift", "uplift-", "-uplift"):
        refused(lambda: deploy(name=name), "name")


def test_deploy_takes_any_kubernetes_service_account_name():
    # A ServiceAccount's name is a DNS-1123 subdomain, not a label KServe derives names from: these
    # valid accounts were refused as "a DNS-1035 label of at most 45 characters" (a review).
    for account in ("1-serving", "serving.prod", "tauforge-serving-account-for-the-causal-inference-team"):
        deploy(service_account=account)
    for account in ("", "Serving", "serving.", "a" * 254):
        refused(lambda: deploy(service_account=account), "service_account")


def test_deploy_traffic_exploration_and_gpus_keep_to_their_ranges():
    deploy(mode="canary", percent=100)
    deploy(mode="canary", percent=1)
    deploy(explore=0.0)
    deploy(explore=1.0)
    for percent in (0, -5, 100.5):
        refused(lambda: deploy(mode="canary", percent=percent), "percent")
    for percent in (0.4, 99.6):  # canaryTrafficPercent is whole: refused, not rounded
        refused(lambda: deploy(mode="canary", percent=percent), "percent")
    refused(lambda: deploy(mode="shadow", champion_version=2, percent=0), "percent")  # a mirror of nothing
    for explore in (-0.1, 1.1):
        refused(lambda: deploy(explore=explore), "explore")
    refused(lambda: deploy(gpus=-1), "gpus")


def test_deploy_refuses_stores_the_cluster_cannot_read_in_every_local_form():
    for store in ("local:///srv/store", "file:///srv/store", "/srv/store"):
        refused(lambda: deploy(store=store), "store")
    refused(lambda: deploy(mode="shadow", champion_version=2, router="predictor", store="pvc://claim/s"), "router")
    deploy(mode="replace", router="predictor", store="pvc://claim/s")  # one version: KServe mounts it


def test_a_two_version_deployment_compares_two_versions():
    deploy(mode="shadow", version=2, champion_version=1)
    refused(lambda: deploy(mode="shadow", version=2, champion_version=2), "champion_version")
    refused(lambda: deploy(mode="canary", router="predictor", version=2, champion_version=2), "champion_version")
