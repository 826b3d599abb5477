"""The DALI webdataset index files: malformed ones are refused with the file named."""
import pytest

from pipelines.formats import wds_index


def test_parse_index_rejects_malformed_files(tmp_path):
    p = tmp_path / "x.idx"
    p.write_text("v1.1 1\njpg 512 10 a.jpg\n")
    with pytest.raises(ValueError, match="first line"):
        wds_index.parse_index(p)
    p.write_text("v1.2 2\njpg 512 10 a.jpg\n")
    with pytest.raises(ValueError, match="header says 2"):
        wds_index.parse_index(p)
    p.write_text("v1.2 1\njpg 512 ten a.jpg\n")
    with pytest.raises(ValueError, match="integers"):
        wds_index.parse_index(p)
