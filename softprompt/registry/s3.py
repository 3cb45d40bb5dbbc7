"""The S3 backend (any S3-compatible endpoint) through boto3.

Credentials, region and endpoint come from the standard AWS chain only (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws files, instance or pod roles;
AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3 for a non-AWS endpoint), never from code. Pass a
`boto3.Session` to pick a profile.

Conditional writes are S3's own: `create` is PutObject with If-None-Match: *, `replace` is
PutObject with If-Match: <etag>; a 412 (or the 409 AWS returns for a concurrent conditional
write) becomes ConflictError. Checked against SeaweedFS 4.48 (tests/s3server.py): both headers are
honoured, also under 16 concurrent writers, and If-Match on a missing key answers 412.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from softprompt.registry.errors import (
    ConflictError,
    NotFoundError,
    RegistryAccessError,
    RegistryError,
    RegistryUnavailableError,
)
from softprompt.registry.stores import Store, StoredObject

_UNREACHABLE = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError,
                ReadTimeoutError)
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
           "ExpiredToken", "403"}


# botocore's JSON model loader, shared, because building a client from scratch parses ~1 MB of
# JSON.
_loader = None


def _new_session():
    """A fresh boto3 session (credentials resolved anew, from the standard chain) that reuses the
    process's already-parsed service models."""
    global _loader
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    if _loader is None:
        _loader = core.get_component("data_loader")
    else:
        core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket or any(p in (".", "..") for p in prefix.split("/")) or "//" in prefix:
        raise RegistryError(f"invalid S3 registry URI {uri!r}: expected s3://<bucket>[/<prefix>]")
    return bucket, prefix


class S3Store(Store):
    def __init__(self, uri: str, session=None) -> None:
        from botocore.config import Config

        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        session = session or _new_session()
        self.client = session.client(
            "s3",
            config=Config(
                connect_timeout=5, read_timeout=30, retries={"mode": "standard"},
                # Path-style addressing: S3-compatible servers on an IP or plain host name need it.
                s3={"addressing_style": "path"},
            ),
        )
        self.endpoint = self.client.meta.endpoint_url

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn, **kwargs):
        """Runs one S3 call, translating failures into registry errors that name the object."""
        where = f"{self.uri}/{key}" if key else self.uri
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except _UNREACHABLE as err:
            raise RegistryUnavailableError(
                f"{where}: cannot reach the S3 endpoint {self.endpoint} ({what}): {err}"
            ) from err
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise RegistryAccessError(
                f"{where}: no usable AWS credentials ({err}); set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role"
            ) from err
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise ConflictError(f"{where}: conditional {what} failed ({code})") from err
            if code == "NoSuchBucket":
                raise RegistryAccessError(
                    f"{where}: bucket {self.bucket!r} does not exist at {self.endpoint}"
                ) from err
            if code in ("NoSuchKey", "404") or status == 404:
                raise NotFoundError(f"{where} not found") from err
            if code in _DENIED or status == 403:
                raise RegistryAccessError(
                    f"{where}: access denied by {self.endpoint} ({code}): "
                    "check the AWS credentials and their permissions"
                ) from err
            if status is not None and status >= 500:
                raise RegistryUnavailableError(
                    f"{where}: S3 server error {status} {code} ({what})"
                ) from err
            raise RegistryError(f"{where}: S3 {what} failed: {code} {err}") from err
        except BotoCoreError as err:
            raise RegistryError(f"{where}: S3 {what} failed: {err}") from err

    def read(self, key: str) -> tuple[bytes, str]:
        response = self._call("GET", key, self.client.get_object, Key=self._key(key))
        try:
            data = response["Body"].read()
        except (BotoCoreError, OSError) as err:  # the connection dropped mid-body
            raise RegistryUnavailableError(
                f"{self.uri}/{key}: download interrupted from {self.endpoint}: {err}"
            ) from err
        return data, response["ETag"]

    def create(self, key: str, data: bytes) -> str:
        response = self._call("create", key, self.client.put_object, Key=self._key(key),
                              Body=data, IfNoneMatch="*")
        return response["ETag"]

    def replace(self, key: str, data: bytes, etag: str) -> str:
        response = self._call("replace", key, self.client.put_object, Key=self._key(key),
                              Body=data, IfMatch=etag)
        return response["ETag"]

    def write(self, key: str, data: bytes) -> None:
        self._call("PUT", key, self.client.put_object, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        try:
            self._call("HEAD", key, self.client.head_object, Key=self._key(key))
        except NotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call("DELETE", key, self.client.delete_object, Key=self._key(key))

    def _pages(self, prefix: str, **kwargs):
        """Every page of a LIST of `prefix/`, following continuation tokens."""
        token = None
        while True:
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("LIST", prefix, self.client.list_objects_v2,
                              Prefix=self._key(prefix) + "/", **kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def children(self, prefix: str) -> list[str]:
        full = self._key(prefix) + "/"
        names = []
        for page in self._pages(prefix, Delimiter="/"):
            names += [p["Prefix"][len(full):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            names += [o["Key"][len(full):] for o in page.get("Contents", [])]
        return names

    def objects(self, prefix: str) -> list[StoredObject]:
        root = self._key("")
        return [
            StoredObject(o["Key"][len(root):], o["Size"], o["LastModified"].timestamp())
            for page in self._pages(prefix)
            for o in page.get("Contents", [])
        ]
