"""fetch: sha256-verified downloads that never leave a partial file, never hang, and explain how
to work offline."""

import hashlib
import os
import socket
import time

import pytest

from titans.data import DataUnavailableError
from titans.data.fetch import fetch, sha256_file

PAYLOAD = b"some bytes of a dataset\n" * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "remote" / "data.tgz"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path.as_uri()


def test_download_verifies_and_caches(tmp_path, source):
    dest = tmp_path / "cache" / "data.tgz"
    assert fetch(source, dest, SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sha256_file(dest) == SHA
    # Cached: the URL is not used again.
    assert fetch("http://127.0.0.1:9/", dest, SHA) == dest


def test_sha_mismatch_leaves_no_file(tmp_path, source):
    dest = tmp_path / "cache" / "data.tgz"
    with pytest.raises(ValueError, match="corrupted or incomplete") as info:
        fetch(source, dest, "0" * 64)
    assert SHA in str(info.value) and source in str(info.value)
    assert not dest.exists()
    assert os.listdir(dest.parent) == []  # no temporary file either


def test_unreachable_names_url_sha_and_manual_path(tmp_path):
    dest = tmp_path / "cache" / "data.tgz"
    with pytest.raises(DataUnavailableError) as info:
        fetch("http://127.0.0.1:9/data.tgz", dest, SHA)
    message = str(info.value)
    assert "http://127.0.0.1:9/data.tgz" in message and SHA in message and str(dest) in message
    assert not dest.exists()


def test_manually_placed_file_is_used(tmp_path):
    dest = tmp_path / "data.tgz"
    dest.write_bytes(PAYLOAD)
    assert fetch("http://127.0.0.1:9/data.tgz", dest, SHA).read_bytes() == PAYLOAD


def test_corrupted_cached_file_is_reported(tmp_path):
    dest = tmp_path / "data.tgz"
    dest.write_bytes(PAYLOAD[:-1])
    with pytest.raises(ValueError, match="delete it"):
        fetch("http://127.0.0.1:9/data.tgz", dest, SHA)


def test_silent_server_times_out(tmp_path):
    # A server that accepts connections but never answers: the download must give up.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/data.tgz"
        start = time.monotonic()
        with pytest.raises(DataUnavailableError, match="timed out"):
            fetch(url, tmp_path / "data.tgz", SHA, timeout=0.5)
    assert time.monotonic() - start < 10
    assert os.listdir(tmp_path) == []
