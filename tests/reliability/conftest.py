"""Fixtures of the reliability suite: one bad-input corpus per session (read-only)."""
import pytest

from tests.reliability.corpus import write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The corpus of ``corpus.py``; tests only read it (converters write elsewhere)."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "images")
