"""Image prewarm: keep a node's hot images pulled and pinned in containerd.

desired.py    which images: the HotImageSets that apply to the node, merged
plan.py       pure decisions: pull, pin, unpin, remove; which waiting pull goes next
engine.py     PrewarmEngine, the orchestration; its collaborators:
              prepare.py (credentials, manifest layers), slots.py (concurrency),
              apply.py (containerd labels and pulls), progress.py (bytes from ingests),
              diskguard.py (the disk-space guard), reporting.py (the ProgressReporter
              port and the ticker that feeds it)
state.py      ImageState per image, PrewarmSummary per pass
config.py     EngineConfig, and PrewarmOptions: what every prewarming command is told
commands.py   `prewarm`, `images`, and the pull flags shared with `snapshot build` and
              `agent`; run.py (a `prewarm` run), inventory.py (`images` rows),
              display.py (bars and log lines on the CLI)
"""
