"""deploy/k8s, validated as far as that goes without a cluster: the run launcher block is instance
config that K8sRunLauncher accepts and constructs from, the executor block is run config that the
nightly job accepts with MASKFIND_EXECUTOR=k8s, and together they give the training step's pod a
GPU. The launcher reads a kubeconfig for an address where nothing listens; no call is made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import class_from_code_pointer
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)
from kubernetes.client import V1Container

from maskfind_pipeline.definitions import defs
from tests.support.models import nightly_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
IMAGE, NAMESPACE = "registry.example.com/maskfind:2025.06.1", "maskfind"
NOWHERE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: nobody, user: {token: not-a-token}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody}}]
current-context: nowhere
"""


@pytest.fixture
def launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKFIND_IMAGE", IMAGE)
    monkeypatch.setenv("MASKFIND_K8S_NAMESPACE", NAMESPACE)


@pytest.fixture
def launcher_config(launcher_env: None) -> dict[str, Any]:
    """deploy/k8s/dagster.yaml's run launcher config as the instance would process it."""
    instance, _ = dagster_instance_config(str(K8S))
    launcher = instance["run_launcher"]
    assert class_from_code_pointer(launcher["module"], launcher["class"]) is K8sRunLauncher
    processed = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert processed.success, processed.errors
    return dict(processed.value or {})


def executor_document() -> dict[str, Any]:
    return yaml.safe_load((K8S / "executor.yaml").read_text())


def nightly_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> dg.JobDefinition:
    monkeypatch.setenv("MASKFIND_HOME", str(tmp_path))
    monkeypatch.delenv("MASKFIND_EXECUTOR_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return defs().resolve_job_def("nightly")


def test_the_run_launcher_block_is_k8s_run_launcher_config(launcher_config: dict) -> None:
    assert launcher_config["job_image"] == IMAGE
    assert launcher_config["job_namespace"] == NAMESPACE
    assert launcher_config["instance_config_map"] == "dagster-instance"
    assert launcher_config["env_secrets"] == ["maskfind-credentials"]
    assert launcher_config["env_config_maps"] == ["maskfind-settings"]
    assert launcher_config["resources"]["limits"] == {"memory": "2Gi"}


def test_the_image_and_namespace_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MASKFIND_IMAGE", raising=False)
    monkeypatch.setenv("MASKFIND_K8S_NAMESPACE", NAMESPACE)
    instance, _ = dagster_instance_config(str(K8S))
    processed = process_config(K8sRunLauncher.config_type(), instance["run_launcher"]["config"])
    assert not processed.success
    assert "MASKFIND_IMAGE" in str(processed.errors)


def test_the_executor_block_is_run_config_of_the_nightly_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nightly = nightly_with(monkeypatch, tmp_path, MASKFIND_EXECUTOR="k8s")
    assert nightly.executor_def.name == "k8s"
    resolved = dg.validate_run_config(nightly, {**nightly_config(), **executor_document()})
    per_step = resolved["execution"]["k8s"]["per_step_k8s_config"]
    # Per-step settings are keyed by step (op) name: a misspelt one would silently do nothing.
    assert set(per_step) <= {node.name for node in nightly.graph.nodes}
    assert "mask_model" in per_step


def test_the_executor_block_can_be_every_runs_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nightly = nightly_with(
        monkeypatch,
        tmp_path,
        MASKFIND_EXECUTOR="k8s",
        MASKFIND_EXECUTOR_CONFIG=str(K8S / "executor.yaml"),
    )
    resolved = dg.validate_run_config(nightly, nightly_config())
    assert resolved["execution"]["k8s"]["max_concurrent"] == 4


def test_every_step_config_is_kubernetes_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    config = executor_document()["execution"]["config"]
    for step in [config["step_k8s_config"], *config["per_step_k8s_config"].values()]:
        UserDefinedDagsterK8sConfig.from_dict(step)  # raises on a field Kubernetes lacks
    misspelt = {"container_config": {"resource": {"limits": {"memory": "1Gi"}}}}
    with pytest.raises(Exception, match="Unexpected keys in model class V1Container"):
        UserDefinedDagsterK8sConfig.from_dict(misspelt)


def test_the_training_step_pod_gets_a_gpu_the_image_and_the_credentials(
    launcher_config: dict, tmp_path: Path
) -> None:
    training = step_container("mask_model", launcher_config, tmp_path)
    assert training.image == IMAGE
    assert training.resources is not None
    assert training.resources.limits == {"memory": "24Gi", "nvidia.com/gpu": "1"}
    assert (training.resources.requests or {})["nvidia.com/gpu"] == "1"
    secrets = {source.secret_ref.name for source in training.env_from or [] if source.secret_ref}
    assert secrets == {"maskfind-credentials"}
    other = step_container("image_catalog", launcher_config, tmp_path)
    assert other.resources is not None
    assert other.resources.limits == {"memory": "4Gi"}


def test_the_op_tag_form_is_the_same_setting() -> None:
    """`@dg.asset(op_tags={"dagster-k8s/config": ...})` in code carries what per_step_k8s_config
    carries in deploy/k8s/executor.yaml."""
    training = executor_document()["execution"]["config"]["per_step_k8s_config"]["mask_model"]
    from_tag = get_user_defined_k8s_config({"dagster-k8s/config": json.dumps(training)})
    assert from_tag == UserDefinedDagsterK8sConfig.from_dict(training)


def step_container(step: str, launcher_config: dict, tmp_path: Path) -> V1Container:
    """The container of `step`'s Kubernetes Job, merged as dagster-k8s's step handler merges it:
    the run launcher's settings, the executor's `step_k8s_config`, then the step's own."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(NOWHERE_KUBECONFIG)
    launcher = K8sRunLauncher(
        **{**launcher_config, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    )
    executor = executor_document()["execution"]["config"]
    context = K8sContainerContext.create_for_run(
        dg.DagsterRun(job_name="nightly", run_id="0" * 36), launcher, include_run_tags=False
    )
    for layer in (executor["step_k8s_config"], executor["per_step_k8s_config"].get(step, {})):
        context = context.merge(
            K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(layer))
        )
    job = construct_dagster_k8s_job(
        context.get_k8s_job_config(None, launcher),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{step.replace('_', '-')}",
        user_defined_k8s_config=context.run_k8s_config,
        component="step_worker",
    )
    assert job.spec is not None and job.spec.template.spec is not None
    return job.spec.template.spec.containers[0]
