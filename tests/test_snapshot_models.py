"""`snapshot build --models-file`: the model cache rides along in the snapshot when it is on
the data volume. moto in server mode over HTTP serves both EC2 (through the recording
proxy of tests/support/aws_servers.py) and S3 (the models); a private containerd whose
root is on a loop-mounted XFS stands in for the node's data volume (a loop device is not
EBS, so the runs pass --volume-id of a moto volume; the freeze is real)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from support import snapshot_env
from support.aws_servers import REGION, AwsProxy, MotoServer
from support.prewarm_helpers import hotlist_yaml

from nodeagent.cli import main
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.snapshot import tags as T

BUCKET = "models"
moto = snapshot_env.moto
proxy = snapshot_env.proxy
volume_id = snapshot_env.volume_id
node = snapshot_env.node


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, moto: MotoServer, proxy: AwsProxy,
            tmp_path: Path) -> None:
    snapshot_env.isolate_aws(monkeypatch, moto, proxy, tmp_path)
    monkeypatch.delenv("NODEAGENT_MODEL_CACHE_DIR", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)  # the models: straight to moto


@pytest.fixture
def direct(moto: MotoServer) -> dict:
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    return {"ec2": boto3.client("ec2", endpoint_url=moto.url, region_name=REGION), "s3": s3}


def base(node: PrivateContainerd, proxy: AwsProxy, tmp_path: Path, volume_id: str,
         hot: Path, models: Path) -> list[str]:
    return ["snapshot", "build", "-f", str(hot), "--models-file", str(models),
            "--containerd-address", node.address, "--containerd-root", str(node.root),
            "--endpoint-url", proxy.url, "--poll-interval", "0.05",
            "--kubelet-dir", str(tmp_path / "no-kubelet"), "--node-name", "builder-1",
            "--instance-id", "i-0b1d2e3f4a5b6c7d8", "--volume-id", volume_id]


def files(tmp_path: Path, sample_images, *models: tuple[str, str]) -> tuple[Path, Path]:
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("ml", [sample_images["python"].ref]))
    listed = tmp_path / "models.yaml"
    listed.write_text(json.dumps({
        "apiVersion": "nodeagent.io/v1alpha1", "kind": "HotModelSet",
        "metadata": {"name": "serving"}, "spec": {"nodeSelector": {"matchLabels": {
            "workload": "inference"}},  # a builder takes every set
            "models": [{"name": n, "source": s} for n, s in models]}}))
    return hot, listed


def test_build_puts_the_models_in_the_snapshot(node, proxy, direct, volume_id, sample_images,
                                               tmp_path, capsys):
    direct["s3"].put_object(Bucket=BUCKET, Key="llama/config.json", Body=b"{}")
    direct["s3"].put_object(Bucket=BUCKET, Key="llama/w.bin", Body=b"w" * 100_000)
    hot, listed = files(tmp_path, sample_images, ("llama", f"s3://{BUCKET}/llama/"))
    cache = node.root.parent / "models"  # on the data volume, beside containerd's root
    code = main([*base(node, proxy, tmp_path, volume_id, hot, listed),
                 "--model-cache-dir", str(cache), "-o", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["models"] == ["llama"]
    assert (cache / "llama" / "w.bin").read_bytes() == b"w" * 100_000
    snap = direct["ec2"].describe_snapshots(SnapshotIds=[out["snapshotId"]])["Snapshots"][0]
    tags = T.tag_map(snap["Tags"])
    assert (tags[T.MODELS], tags[T.MODEL_COUNT]) == ("llama", "1")
    images = [sample_images["python"].ref]
    assert tags[T.HOTLIST_DIGEST] == T.hotlist_digest(images, ["llama"])
    assert tags[T.HOTLIST_DIGEST] != T.hotlist_digest(images)


def test_a_cache_off_the_volume_is_refused_before_anything(node, proxy, direct, volume_id,
                                                            sample_images, tmp_path, capsys):
    direct["s3"].put_object(Bucket=BUCKET, Key="llama/w.bin", Body=b"w")
    hot, listed = files(tmp_path, sample_images, ("llama", f"s3://{BUCKET}/llama/"))
    elsewhere = tmp_path / "models"  # the test machine's root filesystem, not the loop XFS
    code = main([*base(node, proxy, tmp_path, volume_id, hot, listed),
                 "--model-cache-dir", str(elsewhere)])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"--model-cache-dir {elsewhere} is on the filesystem mounted at /" in err
            and "not on the volume being snapshotted" in err)
    assert proxy.actions() == []  # nothing asked of EC2
    assert not elsewhere.exists()  # nothing downloaded
    assert node.ctr("images", "ls", "-q").split() == []  # nothing pulled


def test_a_missing_model_means_no_snapshot(node, proxy, direct, volume_id, sample_images,
                                           tmp_path, capsys):
    hot, listed = files(tmp_path, sample_images, ("gone", f"s3://{BUCKET}/gone/"))
    code = main([*base(node, proxy, tmp_path, volume_id, hot, listed),
                 "--model-cache-dir", str(node.root.parent / "models")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"not snapshotting: model gone: no objects below s3://{BUCKET}/gone/" in err
    assert "CreateSnapshot" not in proxy.actions()


def test_model_flags_need_a_model_list(node, proxy, volume_id, sample_images, tmp_path,
                                       capsys):
    hot, listed = files(tmp_path, sample_images, ("a", f"s3://{BUCKET}/a/"))
    args = base(node, proxy, tmp_path, volume_id, hot, listed)
    at = args.index("--models-file")
    del args[at:at + 2]
    assert main([*args, "--model-cache-dir", str(tmp_path / "m")]) == 2
    assert "--model-cache-dir needs --models-file" in capsys.readouterr().err
