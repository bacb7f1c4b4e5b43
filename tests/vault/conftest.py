"""Fixtures of the vault suites.

- ``data_root``: a fresh data root, once per backend: a local folder and an ``s3://`` root on
  moto. Tests of the store's behaviour take it and so run on both.
"""

import pytest


@pytest.fixture(params=["local", "s3"])
def data_root(request, tmp_path):
    """A fresh, empty data root on each backend."""
    if request.param == "local":
        return tmp_path / "data"
    return request.getfixturevalue("s3").root()
