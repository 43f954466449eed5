"""Fixtures of the data tests: small corpora written on the fly, and a log sink."""

from pathlib import Path

import pytest

class Log(list):
  """Collects log lines instead of printing them."""

  def __call__(self, line):
    self.append(line)


@pytest.fixture
def log():
  return Log()


@pytest.fixture
def write(tmp_path):
  """write(name, text) -> Path of a UTF-8 file under tmp_path."""

  def _write(name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path

  return _write


@pytest.fixture
def data_dir(tmp_path):
  return tmp_path / "data_dir"


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
  """One data_dir for the slow tests that download the real packages."""
  return tmp_path_factory.mktemp("jmtl_data")
