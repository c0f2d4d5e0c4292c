"""Constructing the lightkube client: in-cluster service account, kubeconfig or a URL.

Order (first that applies): ``--server URL`` (tests, port-forwards), ``--kubeconfig``,
the in-cluster service account (a DaemonSet pod), then ``$KUBECONFIG`` /
``~/.kube/config``. lightkube is imported here and only here at call time, so the CLI
stays light for commands that never talk to the API server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from nodeagent.api.group import GROUP, VERSION, Kind
from nodeagent.errors import NodeagentError

if TYPE_CHECKING:
    from lightkube import AsyncClient, KubeConfig

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
FIELD_MANAGER = "nodeagent"


class KubeConfigError(NodeagentError):
    """No usable Kubernetes API configuration."""


def load_config(server: str | None = None, kubeconfig: str | None = None,
                service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConfig:
    from lightkube import ConfigError, KubeConfig
    from lightkube.config.models import Cluster, User

    try:
        if server:
            # from_server() leaves the user unset, which lightkube's client then refuses.
            return KubeConfig.from_one(cluster=Cluster(server=server), user=User())
        if kubeconfig:
            return KubeConfig.from_file(kubeconfig)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and (service_account_dir / "token").exists():
            return KubeConfig.from_service_account(service_account_dir)
        return KubeConfig.from_env()
    except ConfigError as exc:
        raise KubeConfigError(
            f"cannot load the Kubernetes API configuration: {exc}; run inside the cluster "
            "(service account), or pass --kubeconfig PATH or --server URL"
        ) from None
    except OSError as exc:
        raise KubeConfigError(f"cannot read kubeconfig {kubeconfig}: {exc.strerror}") from None


def make_client(config: KubeConfig, timeout_s: float = 15.0) -> AsyncClient:
    """An AsyncClient for ``config``; watches have no read timeout (lightkube's rule)."""
    import httpx2
    from lightkube import AsyncClient

    return AsyncClient(config=config, timeout=httpx2.Timeout(timeout_s),
                       field_manager=FIELD_MANAGER, trust_env=False)


def api_resource(kind: Kind) -> type:
    """The lightkube generic resource class of a cluster-scoped nodeagent.io kind."""
    from lightkube.generic_resource import create_global_resource

    return create_global_resource(GROUP, VERSION, kind.name, kind.plural)
