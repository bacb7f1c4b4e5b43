"""Fixtures of the vault suites.

- ``s3``: moto's S3 server for the whole session (:class:`tests.support.s3.S3Env`).
- ``data_root``: a fresh data root, once per backend: a local folder and an ``s3://`` root on
  moto. Tests of the store's behaviour take it and so run on both.
"""

import pytest

from tests.support.s3 import s3_server


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server (in memory, 127.0.0.1, stopped by pid at the end of the session)."""
    with s3_server(tmp_path_factory.mktemp("s3")) as env:
        yield env


@pytest.fixture(params=["local", "s3"])
def data_root(request, tmp_path):
    """A fresh, empty data root on each backend."""
    if request.param == "local":
        return tmp_path / "data"
    return request.getfixturevalue("s3").root()
