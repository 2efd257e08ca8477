"""An S3-compatible server for the tests: moto's standalone server (`moto_server`) in a
process of its own, with one bucket, and the credentials it accepts."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3

from tests.test_load_shutdown import free_port

BUCKET = "genserve-jobs"
# moto takes any credentials; the server processes read them as AWS's own variables.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "genserve-test",
    "AWS_SECRET_ACCESS_KEY": "genserve-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def client(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)  # type: ignore[attr-defined]
        return [item["Key"] for item in listed.get("Contents", [])]


@contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    with (log_dir / "moto.log").open("ab") as log:
        process = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        server = S3Server(f"http://127.0.0.1:{port}", BUCKET)
        deadline = time.monotonic() + 60
        while True:
            try:
                server.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        process.wait(30)
