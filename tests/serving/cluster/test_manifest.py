"""The KubeRay manifest (deploy/kuberay/rayservice.yaml) names what the code expects: a Serve
config Ray accepts, an importable application builder, args that are ClusterOptions fields,
and pods with room for the replicas it asks for."""

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from codegemma.serving.cluster.options import APP_NAME, ClusterOptions

ROOT = Path(__file__).resolve().parents[3]  # tests/serving/cluster/ -> the repository
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"


@pytest.fixture(scope="module")
def service() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def serve_config(service) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])  # a YAML document in a string


def test_it_is_a_rayservice_whose_serve_config_ray_accepts(service, serve_config):
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    ServeDeploySchema.model_validate(serve_config)
    (application,) = serve_config["applications"]
    assert application["name"] == APP_NAME and application["route_prefix"] == "/"
    major, minor = map(int, service["spec"]["rayClusterConfig"]["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 60)  # the request-router and late-bound ingress APIs


def test_the_import_path_builds_the_application_from_its_args(serve_config):
    (application,) = serve_config["applications"]
    module, _, name = application["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert len(inspect.signature(builder).parameters) == 1  # what Serve calls it with
    assert isinstance(builder(application["args"]), Application)
    options = ClusterOptions.from_args(application["args"])  # every arg is a field
    assert options.model and options.replicas >= 1


def test_the_pods_have_room_for_the_replicas_and_expose_serve(service, serve_config):
    cluster = service["spec"]["rayClusterConfig"]
    options = ClusterOptions.from_args(serve_config["applications"][0]["args"])
    workers = cluster["workerGroupSpecs"]
    cpus = sum(int(group["rayStartParams"]["num-cpus"]) * group["replicas"] for group in workers)
    assert cpus >= options.replicas * options.threads  # each replica reserves `threads` CPUs
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in head["ports"]}
    assert ports["serve"] == serve_config["http_options"]["port"]
    for group in workers:
        (container,) = group["template"]["spec"]["containers"]
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert any(options.model.startswith(mount + "/") for mount in mounts)
