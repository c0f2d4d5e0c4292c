"""The DaemonSet agent (`nodeagent agent`): the one place that wires the concerns together.

commands.py   the command's flags -> AgentConfig (config.py)
process.py    the process: signals, metrics server, Kubernetes and containerd clients
daemon.py     the control loop: watches -> selection -> prewarm engine, Node condition,
              Events, startup taint, local storage
selection.py  which HotImageSets apply to this node; the engine's progress feed
condition.py  the ImagesPrewarmed condition rule
storage.py    `disks setup` in a child process, disk metrics
hydration.py  after a restore from a snapshot, read the hot images' blocks once per boot
models.py     HotModelSets -> this node's model cache (a keeper thread), its status
models_condition.py  the ModelsPrewarmed condition rule

It imports the concerns (kube, prewarm, models, disks, snapshot, credentials, api); none
of them imports it.
"""
