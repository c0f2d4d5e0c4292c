"""One source per model, by scheme, with the clients shared by every model of a sync.

S3 models share one boto3 client (its connection pool is the download's parallelism);
OCI models share one ``OciClient`` (an event loop thread, a registry session and the
node's keyring), created only when a model needs it. ``close()`` ends them.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from nodeagent.models.source import ModelSource
from nodeagent.models.spec import ModelSpec

if TYPE_CHECKING:
    from nodeagent.models.oci import OciClient
    from nodeagent.models.options import SyncOptions


class Sources:
    def __init__(self, options: SyncOptions):
        self.options = options
        self._s3: Any = None
        self._oci: OciClient | None = None
        self._lock = threading.Lock()

    def __call__(self, spec: ModelSpec) -> ModelSource:
        if spec.scheme == "oci":
            from nodeagent.models.oci import OciSource

            return OciSource(spec.name, spec.source, self._oci_client())
        from nodeagent.models.s3 import S3Source

        return S3Source(spec.name, spec.source, self._s3_client())

    def _s3_client(self) -> Any:
        from nodeagent.models.s3 import make_client

        with self._lock:
            if self._s3 is None:
                o = self.options
                self._s3 = make_client(o.concurrency, o.region, o.endpoint_url)
            return self._s3

    def _oci_client(self) -> OciClient:
        from nodeagent.models.oci import OciClient

        with self._lock:
            if self._oci is None:
                credentials = self.options.credentials

                def keyring() -> Any:
                    if credentials is None:
                        return None
                    from nodeagent.credentials.options import build_keyring

                    return build_keyring(credentials)

                self._oci = OciClient(self.options.concurrency + 4, self.options.hosts_dir,
                                      keyring)
            return self._oci

    def close(self) -> None:
        with self._lock:
            oci, self._oci = self._oci, None
        if oci is not None:
            oci.close()
