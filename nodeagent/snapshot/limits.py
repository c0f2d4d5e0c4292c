"""The documented ranges of the snapshot and hydrate numbers (one owner: the flags in
commands.py and the checks of the options objects both read them). Pure constants."""

from __future__ import annotations

# snapshot create / build
TIMEOUT_S = (0.0, 7 * 86400.0)  # (low open] seconds to wait for completion: up to 7 days
POLL_S = (0.01, 3600.0)  # seconds between DescribeSnapshots
MAX_FREEZE_S = (0.0, 300.0)  # (low open] the watchdog thaws after this: 5 min at most
# AWS calls (every snapshot command)
MAX_ATTEMPTS = (1, 50)
# snapshot prune
KEEP = (1, 1000)
# hydrate
WORKERS = (1, 64)
RATE_BPS = (64 * 2**10, 2**40)  # 64 KiB/s to 1 TiB/s
