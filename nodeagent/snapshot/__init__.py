"""EBS snapshots of the prewarmed containerd volume (`nodeagent snapshot`), and hydration
after a restore (`nodeagent hydrate`).

volume.py           which EBS volume holds a path (nodeagent/hostfacts), checks before create
create.py           `snapshot create`: volume id, tags, then the workflow
build.py            `snapshot build`: prewarm, verify, then create
workflow.py         the steps: freeze, CreateSnapshot, thaw, wait, FSR, SSM; list; prune
ec2.py imds.py      AWS clients and errors; instance metadata
freeze.py           a filesystem frozen for the CreateSnapshot call, with a watchdog
tags.py retention.py  what a snapshot records; which snapshots prune keeps (pure)
hydrate.py          hydration's phases; hydrate_plan.py (what to read, in order),
                    hydrate_read.py (rate-limited readers), hydrate_progress.py
commands.py output.py  the commands' flags, and what they print
"""
