"""The dataset formats on disk: what ``dino-convert`` writes and the backends read.

    manifest.py     ``manifest.json``: what a conversion produced (written last)
    wds_index.py    tar shard members and the DALI webdataset index files
    jpeg_header.py  what a JPEG's markers say, read without decoding

Writers live in ``pipelines/convert/``, readers in the backends; both import from here, so
neither reaches into the other.
"""
