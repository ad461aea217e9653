"""Every test runs in an empty working directory of its own.

The CLI's defaults live in the working directory (`vtw calibrate` writes vtw-calibration.yaml there, and
says so when one exists already). A user who runs README's main command and then the tests in the same
checkout must not change what the tests see, and the tests must not leave files in the checkout.
"""

import pytest


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
