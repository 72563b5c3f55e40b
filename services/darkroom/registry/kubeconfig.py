"""Connecting to the Kubernetes API: the pod's service account in a cluster, else a kubeconfig."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.incluster_config import InClusterConfigLoader

SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def load_api_client(
    environ: Mapping[str, str] | None = None,
    *,
    serviceaccount_dir: Path = SERVICEACCOUNT_DIR,
) -> k8s.ApiClient:
    """In a pod (KUBERNETES_SERVICE_HOST set) use its service account, else the kubeconfig."""
    environ = os.environ if environ is None else environ
    configuration = k8s.Configuration()
    if environ.get("KUBERNETES_SERVICE_HOST"):
        # The loader re-reads the token file every minute: projected tokens are rotated.
        InClusterConfigLoader(
            token_filename=str(serviceaccount_dir / "token"),
            cert_filename=str(serviceaccount_dir / "ca.crt"),
            environ=environ,
        ).load_and_set(configuration)
    else:
        k8s_config.load_kube_config(
            config_file=environ.get("KUBECONFIG"),
            client_configuration=configuration,
            persist_config=False,  # a server must not rewrite the user's kubeconfig
        )
    return k8s.ApiClient(configuration)


def pod_namespace(serviceaccount_dir: Path = SERVICEACCOUNT_DIR) -> str:
    """The namespace this pod runs in, or "default" outside a cluster."""
    path = serviceaccount_dir / "namespace"
    try:
        return path.read_text().strip() or "default"
    except FileNotFoundError:
        return "default"
