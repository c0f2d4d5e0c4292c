"""`nodeagent agent`: the DaemonSet's command; its flags become one AgentConfig.

The pull flags are prewarm's and the credential flags credentials', declared once there
and shared with `prewarm` and `snapshot build`; the `disks setup` arguments are checked
by the disks command's own parser. Every flag has an environment variable so the
DaemonSet manifest can set them from the downward API or a ConfigMap. Standard library
and light nodeagent modules only at import time; lightkube, grpc and prometheus-client
load inside the handler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex

from nodeagent.containerd.client import add_address_argument
from nodeagent.credentials.commands import add_credential_arguments
from nodeagent.credentials.options import EKS_PROVIDER_CONFIG
from nodeagent.errors import UsageError
from nodeagent.inputs import Range, env_default, listen_port
from nodeagent.prewarm.commands import add_engine_arguments, prewarm_options

DEFAULT_TAINT = "nodeagent.io/not-ready:NoSchedule"
DEFAULT_METRICS_PORT = 9464
# Documented ranges of the agent's numeric flags (and of their environment variables).
STARTUP_TAINT_TIMEOUT_RANGE = Range(float, 0, 86400)
ROLLOUT_LIMIT_RANGE = Range(int, 0, 100000)  # 0: off
ROLLOUT_SEED_NODES_RANGE = Range(int, 0, 100000)  # 0: no seed wave
LEASE_DURATION_RANGE = Range(int, 3, 3600)
MODELS_RESYNC_RANGE = Range(float, 10, 86400)
HEARTBEAT_RANGE = Range(float, 1, 86400)
STATUS_MIN_INTERVAL_RANGE = Range(float, 0, 3600)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"NODEAGENT_{name}", default)


def _env_number(name: str, default: str) -> str:
    """A numeric flag's default: NODEAGENT_<name> if set, checked by the flag's type."""
    return env_default(f"NODEAGENT_{name}", default)


def metrics_port(text: str) -> int | None:
    """--metrics-port: a port, 0 for any free port, or "off" (no metrics server)."""
    return None if text.strip().lower() in ("off", "-1") else listen_port(text)


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
    p.add_argument("--metrics-port", type=metrics_port, metavar="PORT",
                   default=_env_number("METRICS_PORT", str(DEFAULT_METRICS_PORT)),
                   help=f"port of /metrics, /healthz, /readyz, 1-65535 (0: any free port, "
                        f"logged; off: none; default {DEFAULT_METRICS_PORT}; env "
                        "NODEAGENT_METRICS_PORT)")
    p.add_argument("--metrics-host", default=_env("METRICS_HOST", "0.0.0.0"),
                   help="address to serve metrics on (default 0.0.0.0)")
    _taint_args(p)
    _rollout_args(p)
    _models_args(p)
    add_credential_arguments(
        p, provider_config=_env("CREDENTIAL_PROVIDER_CONFIG", str(EKS_PROVIDER_CONFIG)),
        provider_bin_dir=_env("CREDENTIAL_PROVIDER_BIN_DIR"))
    add_engine_arguments(p, hosts_dir=_env("HOSTS_DIR"))
    p.add_argument("--host-root", default=_env("HOST_ROOT", ""), metavar="DIR",
                   help="where the host's / is mounted in the container, for disk usage")
    p.add_argument("--disks-setup", action="store_true",
                   default=_env("DISKS_SETUP", "") in ("1", "true"),
                   help="run 'nodeagent disks setup --restart-services' at start while the "
                        "node carries the startup taint (env NODEAGENT_DISKS_SETUP=true)")
    p.add_argument("--disks-setup-args", default=_env("DISKS_SETUP_ARGS", ""), metavar="ARGS",
                   help="extra arguments for disks setup, shell-quoted")
    p.add_argument("--heartbeat", type=HEARTBEAT_RANGE, default=600.0, metavar="S",
                   help=f"re-patch an unchanged node condition every S seconds, "
                        f"{HEARTBEAT_RANGE} (default 600)")
    p.add_argument("--status-min-interval", type=STATUS_MIN_INTERVAL_RANGE, default=10.0,
                   metavar="S", help="at most one condition patch per S seconds for "
                   f"count-only changes, {STATUS_MIN_INTERVAL_RANGE} (default 10)")
    add_address_argument(p)
    p.set_defaults(func=agent_handler)


def _taint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--startup-taint", default=_env("STARTUP_TAINT", DEFAULT_TAINT),
                   metavar="KEY[=VALUE][:EFFECT]",
                   help=f"taint to remove once storage and required images are ready "
                        f"(default {DEFAULT_TAINT}; empty disables)")
    p.add_argument("--startup-taint-timeout", type=STARTUP_TAINT_TIMEOUT_RANGE,
                   default=_env_number("STARTUP_TAINT_TIMEOUT", "900"), metavar="S",
                   help="remove the startup taint after S seconds anyway, saying why, "
                        f"{STARTUP_TAINT_TIMEOUT_RANGE} (default 900; env "
                        "NODEAGENT_STARTUP_TAINT_TIMEOUT)")


def _rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rollout-limit", type=ROLLOUT_LIMIT_RANGE,
                   default=_env_number("ROLLOUT_LIMIT", "0"), metavar="N",
                   help="at most N nodes of the cluster pull the same image at once, "
                        f"coordinated with Leases, {ROLLOUT_LIMIT_RANGE} (default 0: off; env "
                        "NODEAGENT_ROLLOUT_LIMIT)")
    p.add_argument("--rollout-seed-nodes", type=ROLLOUT_SEED_NODES_RANGE, metavar="N",
                   default=env_default("NODEAGENT_ROLLOUT_SEED_NODES", None),  # type: ignore
                   help="images whose registry has a mirror in hosts.toml (Spegel, "
                        "Dragonfly, a pull-through cache): the rollout limit holds back only "
                        "the first N nodes; once they have the image the others pull at once "
                        f"through the mirror, {ROLLOUT_SEED_NODES_RANGE} (default: as many as "
                        "--rollout-limit; 0: the plain limit; env NODEAGENT_ROLLOUT_SEED_NODES)")
    p.add_argument("--lease-namespace",
                   default=_env("LEASE_NAMESPACE", os.environ.get("POD_NAMESPACE", "nodeagent")),
                   help="namespace of the rollout Leases (default: the pod's namespace)")
    p.add_argument("--lease-duration", type=LEASE_DURATION_RANGE, default=30, metavar="S",
                   help="a pull slot whose holder did not renew for S seconds is free, "
                        f"{LEASE_DURATION_RANGE} (default 30)")


def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-models", action="store_true",
                   default=_env("MODELS", "true") in ("0", "false"),
                   help="do not watch HotModelSets nor keep a model cache (env "
                        "NODEAGENT_MODELS=false)")
    p.add_argument("--model-cache-dir", default=_env("MODEL_CACHE_DIR"), metavar="DIR",
                   help="the model cache (env NODEAGENT_MODEL_CACHE_DIR; default models/ on "
                        "the local-disk volume when disks setup made one, else "
                        "/var/lib/nodeagent/models)")
    p.add_argument("--models-resync", type=MODELS_RESYNC_RANGE,
                   default=_env_number("MODELS_RESYNC", "600"), metavar="S",
                   help=f"re-check the model sources every S seconds, {MODELS_RESYNC_RANGE} "
                        "(default 600; env NODEAGENT_MODELS_RESYNC)")


def models_config(args: argparse.Namespace):  # -> ModelsConfig | None
    from nodeagent.agent.config import ModelsConfig
    from nodeagent.models.layout import validate_cache_dir

    if args.no_models:
        return None
    if args.model_cache_dir:
        validate_cache_dir(args.model_cache_dir, "--model-cache-dir")
    return ModelsConfig(cache_dir=args.model_cache_dir or None, resync_s=args.models_resync)


def agent_config(args: argparse.Namespace):  # -> AgentConfig (lazy import keeps CLI light)
    from nodeagent.agent.config import AgentConfig, DisksSetup
    from nodeagent.disks.commands import setup_options
    from nodeagent.kube.taint import TaintSpec

    if not args.node_name:
        raise UsageError("the agent needs its node's name: set NODE_NAME (downward API "
                         "fieldRef spec.nodeName) or pass --node-name")
    disks_setup = None
    if args.disks_setup:
        disks_args = shlex.split(args.disks_setup_args)
        # Bad arguments fail now, not on the first boot.
        disks_setup = DisksSetup(tuple(disks_args), setup_options(disks_args))
    # The credential provider config is looked for at a default location: a node
    # without one uses pull secrets only.
    prewarm = prewarm_options(args, provider_optional=True, host_root=args.host_root)
    return AgentConfig(
        node_name=args.node_name,
        containerd_address=args.containerd_address,
        kubeconfig=args.kubeconfig,
        kube_server=args.server,
        prewarm=prewarm,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        startup_taint=TaintSpec.parse(args.startup_taint) if args.startup_taint else None,
        startup_taint_timeout_s=args.startup_taint_timeout,
        rollout_limit=args.rollout_limit,
        rollout_seed_nodes=args.rollout_seed_nodes,
        lease_namespace=args.lease_namespace,
        lease_duration_s=args.lease_duration,
        disks_setup=disks_setup,
        models=models_config(args),
        heartbeat_s=args.heartbeat,
        status_min_interval_s=args.status_min_interval,
    )


def agent_handler(args: argparse.Namespace) -> int:
    from nodeagent.agent.process import main

    return asyncio.run(main(agent_config(args)))
