"""deploy/helm/values.yaml against the dagster chart's schema and dagster-k8s's own config schemas.

No cluster and no network: the chart schema is vendored (deploy/helm/values.schema.json, provenance in
deploy/helm/README.md) and its Kubernetes ``$ref``s, which point at an online copy of the Kubernetes
OpenAPI definitions, resolve to the empty schema here.  Kubernetes objects (volumes, tolerations,
resources) are therefore checked only as far as the chart's own wrapper types check them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

HELM = Path(__file__).resolve().parents[2] / "deploy" / "helm"
K8S_REF_PREFIX = "https://raw.githubusercontent.com/yannh/kubernetes-json-schema/"


def _load_values() -> dict[str, Any]:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def _schema() -> dict[str, Any]:
    return json.loads((HELM / "values.schema.json").read_text())


def _k8s_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if str(node.get("$ref", "")).startswith(K8S_REF_PREFIX) else []
        return found + [ref for value in node.values() for ref in _k8s_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _k8s_refs(value)]
    return []


def _registry(schema: dict[str, Any]) -> referencing.Registry:
    """Resolve each Kubernetes ``$ref`` of the schema to the empty schema, without any download."""
    documents: dict[str, dict[str, Any]] = {}
    for ref in _k8s_refs(schema):
        uri, _, pointer = ref.partition("#")
        node = documents.setdefault(uri, {})
        for part in pointer.strip("/").split("/"):
            node = node.setdefault(part, {})
    return referencing.Registry().with_resources(
        (uri, referencing.Resource.from_contents(doc, default_specification=referencing.jsonschema.DRAFT202012))
        for uri, doc in documents.items()
    )


def _chart_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """The chart's schema without ``required``: Helm validates the merge of the chart's default values
    and this file, and the defaults supply the required keys this file leaves out."""
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    without_required = {k: v for k, v in base.VALIDATORS.items() if k != "required"}
    cls = jsonschema.validators.create(meta_schema=base.META_SCHEMA, validators=without_required)
    return cls(schema, registry=_registry(schema))


def _strict_validator(schema: dict[str, Any], definition: str) -> jsonschema.protocols.Validator:
    """One ``$defs`` entry with ``required`` enforced: list items replace the chart's defaults in Helm's
    merge, so an item must be complete on its own."""
    sub = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    return jsonschema.Draft202012Validator(sub, registry=_registry(schema))


def _chart_errors(values: dict[str, Any]) -> list[str]:
    schema = _schema()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in _chart_validator(schema).iter_errors(values)]
    items = [
        ("UserDeployment", values.get("dagster-user-deployments", {}).get("deployments", [])),
        (
            "schema__charts__dagster__subschema__concurrency__TagConcurrencyLimit",
            values.get("concurrency", {}).get("runs", {}).get("tagConcurrencyLimits", []),
        ),
    ]
    for definition, instances in items:
        validator = _strict_validator(schema, definition)
        errors += [f"{definition}: {e.message}" for item in instances for e in validator.iter_errors(item)]
    return errors


def test_values_match_chart_schema() -> None:
    assert _chart_errors(_load_values()) == []


def test_values_deploy_cryodecon() -> None:
    values = _load_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "cryodecon_assets.definitions", "--attribute", "defs"]
    env = deployment["env"]
    assert env["CRYODECON_EXECUTOR"] == "k8s"
    for variable in (
        "CRYODECON_STORAGE_ROOT",
        "CRYODECON_WAREHOUSE_ROOT",
        "CRYODECON_OUTPUT_ROOT",
        "CRYODECON_LIBRARY_URI",
    ):
        assert env[variable].startswith("/data/"), variable
    assert values["postgresql"]["enabled"] is False
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    # Dagster refuses max_concurrent_runs in both the run coordinator and `concurrency:`.
    assert "maxConcurrentRuns" not in values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert values["concurrency"]["enabled"] is True


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("concurrency", "runs", "maxConcurrentRuns"), "eight"),  # wrong type
        (("concurrency", "pools", "gpuLimit"), 2),  # unknown key, ConcurrencyPools forbids extras
        (("runLauncher", "config", "k8sRunLauncher", "imagePullPolicy"), "Sometimes"),  # not in the enum
        (("runLauncher", "config", "k8sRunLauncher", "stepResources"), {}),  # unknown key
        (("dagsterDaemon", "runCoordinator", "type"), "FifoRunCoordinator"),  # not in the enum
        (("dagster-user-deployments", "deployments", 0, "port"), "3030"),  # wrong type
    ],
)
def test_broken_values_fail_chart_schema(path: tuple[Any, ...], bad: Any) -> None:
    values = copy.deepcopy(_load_values())
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    assert _chart_errors(values), f"{path} = {bad!r} passed the chart schema"


def test_deployment_without_port_fails() -> None:
    values = copy.deepcopy(_load_values())
    del values["dagster-user-deployments"]["deployments"][0]["port"]
    assert any("'port' is a required property" in e for e in _chart_errors(values))


# dagster-k8s: the run launcher and executor configuration against Dagster's own config types.


def _run_launcher_config(values: dict[str, Any]) -> dict[str, Any]:
    """The K8sRunLauncher block of dagster.yaml that the chart renders from ``runLauncher`` (a mirror of
    the chart's templates/helpers/instance/_run-launcher.tpl for the keys set here, not the template)."""
    helm = values["runLauncher"]["config"]["k8sRunLauncher"]
    names = {
        "imagePullPolicy": "image_pull_policy",
        "loadInclusterConfig": "load_incluster_config",
        "envVars": "env_vars",
        "volumeMounts": "volume_mounts",
        "volumes": "volumes",
        "resources": "resources",
        "failPodOnRunFailure": "fail_pod_on_run_failure",
    }
    config = {snake: helm[camel] for camel, snake in names.items() if camel in helm}
    config["env_config_maps"] = [source["name"] for source in helm["envConfigMaps"]]
    config["env_secrets"] = [source["name"] for source in helm["envSecrets"]]
    config.update(
        instance_config_map="cryodecon-dagster-instance",
        postgres_password_secret="cryodecon-postgresql",
        dagster_home="/opt/dagster/dagster_home",
        service_account_name="cryodecon-dagster",
    )
    return config


def _dagster_errors(config_type: Any, value: dict[str, Any]) -> list[str]:
    from dagster._config import process_config

    result = process_config(config_type, value)
    return [] if result.success else [error.message for error in result.errors]


@pytest.fixture(scope="module")
def dagster_k8s() -> Any:
    return pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed: pip install dagster-k8s==0.29.27")


def test_run_launcher_config_matches_dagster_k8s(dagster_k8s: Any) -> None:
    config = _run_launcher_config(_load_values())
    assert _dagster_errors(dagster_k8s.K8sRunLauncher.config_type(), config) == []


def test_executor_config_matches_dagster_k8s(dagster_k8s: Any) -> None:
    executor = _load_values()["cryodecon"]["k8sJobExecutor"]
    assert _dagster_errors(dagster_k8s.k8s_job_executor.config_schema.config_type, executor) == []


def test_the_code_location_reads_the_executor_config_and_gpu_tag_of_these_values(dagster_k8s: Any) -> None:
    from cryodecon_assets.execution import GPU_STEP_TAGS, K8S_CONFIG_TAG, K8S_EXECUTOR_CONFIG_ENV, batch_executor

    values = _load_values()
    env = values["dagster-user-deployments"]["deployments"][0]["env"]
    assert json.loads(env[K8S_EXECUTOR_CONFIG_ENV]) == values["cryodecon"]["k8sJobExecutor"]
    assert GPU_STEP_TAGS[K8S_CONFIG_TAG] == values["cryodecon"]["gpuStepK8sConfig"]
    executor = batch_executor({"CRYODECON_EXECUTOR": "k8s", K8S_EXECUTOR_CONFIG_ENV: env[K8S_EXECUTOR_CONFIG_ENV]})
    assert executor.name == "k8s_job_executor"


def test_gpu_step_tag_matches_dagster_k8s(dagster_k8s: Any) -> None:
    from dagster._config import Shape
    from dagster_k8s.job import USER_DEFINED_K8S_JOB_CONFIG_SCHEMA

    tag = _load_values()["cryodecon"]["gpuStepK8sConfig"]
    assert tag["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    schema = USER_DEFINED_K8S_JOB_CONFIG_SCHEMA
    assert _dagster_errors(schema if isinstance(schema, Shape) else schema.config_type, tag) == []


@pytest.mark.parametrize(
    ("key", "bad"),
    [("max_concurrent", "eight"), ("step_resources", {"cpu": "1"})],  # wrong type; unknown field
)
def test_broken_executor_config_fails(dagster_k8s: Any, key: str, bad: Any) -> None:
    executor = copy.deepcopy(_load_values()["cryodecon"]["k8sJobExecutor"])
    executor[key] = bad
    assert _dagster_errors(dagster_k8s.k8s_job_executor.config_schema.config_type, executor)


def test_broken_run_launcher_config_fails(dagster_k8s: Any) -> None:
    config = _run_launcher_config(_load_values())
    config["load_incluster_config"] = "yes"
    assert _dagster_errors(dagster_k8s.K8sRunLauncher.config_type(), config)
