"""The S3 fixture itself: a signed client works, a wrong secret does not, and
each test's bucket is its own."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.exceptions import ClientError

from tests.s3server import S3Server


def test_round_trip_and_ranged_get(s3_server: S3Server, s3_bucket: str) -> None:
    client = botocore.session.get_session().create_client("s3", **s3_server.client_kwargs())
    try:
        client.put_object(Bucket=s3_bucket, Key="a/b", Body=b"hello")
        got = client.get_object(Bucket=s3_bucket, Key="a/b", Range="bytes=1-3")
        assert got["Body"].read() == b"ell"
        assert got["ContentRange"] == "bytes 1-3/5"
    finally:
        client.close()


def test_each_test_has_an_empty_bucket(s3_server: S3Server, s3_bucket: str) -> None:
    client = botocore.session.get_session().create_client("s3", **s3_server.client_kwargs())
    try:
        assert client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    finally:
        client.close()


def test_wrong_secret_is_refused(s3_server: S3Server, s3_bucket: str) -> None:
    kwargs = s3_server.client_kwargs() | {"aws_secret_access_key": "wrong"}
    client = botocore.session.get_session().create_client("s3", **kwargs)
    try:
        with pytest.raises(ClientError) as caught:
            client.list_objects_v2(Bucket=s3_bucket)
        assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    finally:
        client.close()
