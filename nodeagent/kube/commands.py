"""`nodeagent agent`: the DaemonSet's command (see nodeagent/agent.py).

Standard library and light nodeagent modules only at import time; lightkube, grpc and
prometheus-client load inside the handler. Every flag has an environment variable so
the DaemonSet manifest can set them from the downward API or a ConfigMap.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
from pathlib import Path

from nodeagent.containerd.client import add_address_argument
from nodeagent.errors import UsageError
from nodeagent.prewarm.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STALL_TIMEOUT_S,
    EngineConfig,
)
from nodeagent.prewarm.diskguard import HIGH_WATER_ENV, high_water_override

DEFAULT_TAINT = "nodeagent.io/not-ready:NoSchedule"
DEFAULT_METRICS_PORT = 9464
DEFAULT_CREDENTIAL_PROVIDER_CONFIG = "/etc/eks/image-credential-provider/config.json"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"NODEAGENT_{name}", default)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "agent",
        help="run as the DaemonSet: watch HotImageSets, prewarm this node, report status",
        description=(
            "Watch the cluster's HotImageSets and this node; keep the images of the sets "
            "whose nodeSelector matches the node pulled and pinned in containerd; report the "
            "node condition ImagesPrewarmed, Events and Prometheus metrics; remove the "
            "startup taint when local storage and the required images are ready."
        ),
    )
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                   help="this node's name (env NODE_NAME, from the downward API)")
    p.add_argument("--kubeconfig", default=_env("KUBECONFIG"),
                   help="kubeconfig file (default: in-cluster service account, else "
                        "$KUBECONFIG)")
    p.add_argument("--server", default=_env("KUBE_SERVER"), help=argparse.SUPPRESS)
    p.add_argument("--metrics-port", type=int,
                   default=int(_env("METRICS_PORT", str(DEFAULT_METRICS_PORT)) or 0),
                   help=f"port of /metrics, /healthz, /readyz (default {DEFAULT_METRICS_PORT};"
                        " env NODEAGENT_METRICS_PORT)")
    p.add_argument("--metrics-host", default=_env("METRICS_HOST", "0.0.0.0"),
                   help="address to serve metrics on (default 0.0.0.0)")
    _taint_args(p)
    _rollout_args(p)
    _credential_args(p)
    _engine_args(p)
    p.add_argument("--disks-setup", action="store_true",
                   default=_env("DISKS_SETUP", "") in ("1", "true"),
                   help="run 'nodeagent disks setup --restart-services' at start while the "
                        "node carries the startup taint (env NODEAGENT_DISKS_SETUP=true)")
    p.add_argument("--disks-setup-args", default=_env("DISKS_SETUP_ARGS", ""), metavar="ARGS",
                   help="extra arguments for disks setup, shell-quoted")
    p.add_argument("--heartbeat", type=float, default=600.0, metavar="S",
                   help="re-patch an unchanged node condition every S seconds (default 600)")
    p.add_argument("--status-min-interval", type=float, default=10.0, metavar="S",
                   help="at most one condition patch per S seconds for count-only changes")
    add_address_argument(p)
    p.set_defaults(func=agent_handler)


def _taint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--startup-taint", default=_env("STARTUP_TAINT", DEFAULT_TAINT),
                   metavar="KEY[=VALUE][:EFFECT]",
                   help=f"taint to remove once storage and required images are ready "
                        f"(default {DEFAULT_TAINT}; empty disables)")
    p.add_argument("--startup-taint-timeout", type=float,
                   default=float(_env("STARTUP_TAINT_TIMEOUT", "900") or 900), metavar="S",
                   help="remove the startup taint after S seconds anyway, saying why "
                        "(default 900)")


def _rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rollout-limit", type=int, default=int(_env("ROLLOUT_LIMIT", "0") or 0),
                   metavar="N", help="at most N nodes of the cluster pull the same image at "
                   "once, coordinated with Leases (default 0: off)")
    p.add_argument("--lease-namespace",
                   default=_env("LEASE_NAMESPACE", os.environ.get("POD_NAMESPACE", "nodeagent")),
                   help="namespace of the rollout Leases (default: the pod's namespace)")
    p.add_argument("--lease-duration", type=int, default=30, metavar="S",
                   help="a pull slot whose holder did not renew for S seconds is free "
                        "(default 30)")


def _credential_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--docker-config", action="append", type=Path, default=[], metavar="FILE",
                   help="registry credentials file (docker config.json), repeatable")
    p.add_argument("--credential-provider-config", type=Path,
                   default=_env("CREDENTIAL_PROVIDER_CONFIG", DEFAULT_CREDENTIAL_PROVIDER_CONFIG),
                   metavar="FILE", help="kubelet CredentialProviderConfig, used when present "
                   f"(default {DEFAULT_CREDENTIAL_PROVIDER_CONFIG})")
    p.add_argument("--credential-provider-bin-dir", type=Path,
                   default=_env("CREDENTIAL_PROVIDER_BIN_DIR"), metavar="DIR",
                   help="directory of the credential provider plugins (default: the "
                        "config's directory)")


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                   help=f"images pulled at once on this node (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT_S, metavar="S",
                   help="cancel and retry a pull after S seconds without a new byte")
    p.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES, metavar="N")
    p.add_argument("--high-water", type=float, default=None,
                   metavar="PERCENT", help="skip pulls that would fill the image filesystem "
                   f"past PERCENT (env {HIGH_WATER_ENV}; default 80)")
    p.add_argument("--hosts-dir", type=Path, default=_env("HOSTS_DIR"), metavar="DIR",
                   help="containerd hosts.toml directory (registry mirrors), for manifests")
    p.add_argument("--host-root", default=_env("HOST_ROOT", ""), metavar="DIR",
                   help="where the host's / is mounted in the container, for disk usage")
    p.add_argument("--no-unpin", action="store_true",
                   help="do not unpin images that left the hot list")


def agent_config(args: argparse.Namespace):  # -> AgentConfig (lazy import keeps CLI light)
    from nodeagent.agent import AgentConfig
    from nodeagent.kube.taint import TaintSpec

    if not args.node_name:
        raise UsageError("the agent needs its node's name: set NODE_NAME (downward API "
                         "fieldRef spec.nodeName) or pass --node-name")
    if args.rollout_limit < 0:
        raise UsageError(f"--rollout-limit must be 0 (off) or more, got {args.rollout_limit}")
    if args.lease_duration < 3:
        raise UsageError(f"--lease-duration must be at least 3 seconds, got "
                         f"{args.lease_duration}")
    disks_args = shlex.split(args.disks_setup_args) if args.disks_setup else None
    if disks_args is not None:
        from nodeagent.agent import disks_options

        disks_options(disks_args)  # bad arguments fail now, not on the first boot
    engine = EngineConfig(
        concurrency=args.concurrency, stall_timeout_s=args.stall_timeout,
        max_retries=args.max_retries, **high_water_override(args.high_water),
        unpin_removed=not args.no_unpin, hosts_dir=args.hosts_dir, host_root=args.host_root,
    )
    return AgentConfig(
        node_name=args.node_name,
        containerd_address=args.containerd_address,
        engine=engine,
        metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
        metrics_host=args.metrics_host,
        startup_taint=TaintSpec.parse(args.startup_taint) if args.startup_taint else None,
        startup_taint_timeout_s=args.startup_taint_timeout,
        rollout_limit=args.rollout_limit,
        lease_namespace=args.lease_namespace,
        lease_duration_s=args.lease_duration,
        docker_configs=tuple(args.docker_config),
        credential_provider_config=args.credential_provider_config,
        credential_provider_bin_dir=args.credential_provider_bin_dir,
        disks_setup_args=disks_args,
        heartbeat_s=args.heartbeat,
        status_min_interval_s=args.status_min_interval,
    )


def agent_handler(args: argparse.Namespace) -> int:
    from nodeagent.agent import main

    config = agent_config(args)
    return asyncio.run(main(config, kube_server=args.server, kubeconfig=args.kubeconfig))
