"""The Kubernetes API, through lightkube (async): what the agent asks of the cluster.

client.py      the client: in-cluster service account, kubeconfig or a URL; a nodeagent.io
               kind as a lightkube resource
watch.py       Mirror: a local copy of objects kept current by list + watch
nodestatus.py  a Node condition, patched only when it changes (its rule is its owner's)
taint.py       the startup taint: parse, decide (pure), remove without losing others'
events.py      Events on the Node, deduplicated and rate-limited
lease.py       the cluster-wide rollout limit (a Lease semaphore)
secrets.py     imagePullSecrets read into keyrings (nodeagent/credentials)

Imports neither prewarm nor the agent: they import it.
"""
