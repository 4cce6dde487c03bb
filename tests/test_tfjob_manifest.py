"""deploy/tfjob.yaml: the Kubeflow TFJob runs the package's own train command on workers that
restart together, with the data on gs:// and the run directory on a shared volume."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from braintumor_tf.cli import train_command
from braintumor_tf.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.fixture(scope="module")
def documents():
    with open(DEPLOY / "tfjob.yaml") as handle:
        return {document["kind"]: document for document in yaml.safe_load_all(handle)}


def _worker(documents):
    job = documents["TFJob"]
    assert job["apiVersion"] == "kubeflow.org/v1"
    return job["spec"]["tfReplicaSpecs"]["Worker"]


def test_workers_only_two_of_them_restarting_together(documents):
    job = documents["TFJob"]
    # Worker 0 is the chief: no PS (ParameterServerStrategy does not train with Keras 3's fit),
    # no Chief or Evaluator replicas, which the command would not know what to do with.
    assert set(job["spec"]["tfReplicaSpecs"]) == {"Worker"}
    worker = _worker(documents)
    assert worker["replicas"] == 2
    # The survivors of a dead worker exit 1 (aborted collectives): OnFailure restarts them all;
    # ExitCode would call exit 1 permanent and fail the job instead of resuming.
    assert worker["restartPolicy"] == "OnFailure"
    assert job["spec"]["runPolicy"]["backoffLimit"] >= 1


def test_the_container_runs_the_train_command_with_data_on_gs_and_the_run_on_a_shared_volume(
        documents):
    spec = _worker(documents)["template"]["spec"]
    [container] = spec["containers"]
    assert container["name"] == "tensorflow"  # the operator finds its container by this name
    assert re.fullmatch(r"[\w.\-/:]+/braintumor-tf:\d+\.\d+\.\d+", container["image"])
    assert "latest" not in container["image"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert container["image"].split(":")[-1] in dockerfile  # the tag the Dockerfile says to build
    assert container["command"] == ["braintumor-tf", "train"]
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {"tfjob-port": 2222}

    # The arguments parse as the command's own options and make a valid config.
    context = train_command.make_context("train", list(container["args"]))
    options = context.params
    assert options["old_run_dir"] is None  # the current option name, not the deprecated --out
    assert options["data_roots"] and all(
        root.startswith("gs://") for root in options["data_roots"])
    assert options["subjects_path"].startswith("gs://")
    config = load_config(options["config_path"], list(options["overrides"]))
    assert config.task == "classification" and config.train.distribute in ("auto", "multi_worker")
    assert config.train.batch_size == 64  # global: 32 per worker with 2 workers

    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    out = Path(options["run_dir"])
    [run_volume] = [name for path, name in mounts.items() if out.is_relative_to(path)]
    [volume] = [volume for volume in spec["volumes"] if volume["name"] == run_volume]
    claim = documents["PersistentVolumeClaim"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # every worker reads the chief's run

    environment = {variable["name"]: variable["value"] for variable in container["env"]}
    assert "TF_CONFIG" not in environment  # the operator writes it, per pod
    credentials = Path(environment["GOOGLE_APPLICATION_CREDENTIALS"])
    assert any(credentials.is_relative_to(path) for path in mounts)


def test_the_dockerfile_installs_the_package_with_tensorflow():
    lines = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line and not line.startswith("#")]
    installs = [shlex.split(line.removeprefix("RUN ")) for line in lines if line.startswith("RUN pip")]
    assert installs and ".[cpu]" in installs[-1]
