"""Helpers of the registry credential tests (tests/test_auth_*.py): the secret that must
never leak, and docker config keyrings built from an ``auths`` mapping."""

import base64
import json

from nodeagent.credentials.dockerconfig import DockerConfigKeyring

SECRET = "s3cr3t-Pa55w0rd"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def keyring(auths, **kw):
    return DockerConfigKeyring.from_json(json.dumps({"auths": auths}), "pull-secret")
