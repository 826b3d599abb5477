"""dino-convert starts without the heavy libraries: no torch, numba or FFCV in the converter
or its workers (torch alone costs ~2 s of start-up, paid by every conversion a user times).

Checked in a fresh interpreter, since the test process itself has torch loaded."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.pipelines.images import write_image_folder

HEAVY = ("torch", "numba", "ffcv")

CHILD = """
import json, sys
from pipelines.convert.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
help_loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
codes = [main(["--format", fmt, SRC, f"{DST}-{fmt}", "--workers", "2", "--no-verify",
               "--no-progress", "--max-side", "48"]) for fmt in ("ffcv", "wds")]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"help": help_loaded, "codes": codes, "loaded": loaded}))
"""


def test_converter_runs_without_torch_numba_or_ffcv(tmp_path):
    src = write_image_folder(tmp_path / "src", num_classes=2, per_class=3)
    # one PNG: the decode + re-encode path runs too, not only the byte-for-byte copy
    Image.fromarray(np.full((30, 70, 3), 90, np.uint8)).save(
        sorted(src.iterdir())[0] / "wide.png")
    code = f"HEAVY = {HEAVY!r}\nSRC = {str(src)!r}\nDST = {str(tmp_path / 'out')!r}\n" + CHILD
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=repo, env={"PYTHONPATH": str(repo), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0]
    assert report["help"] == [] and report["loaded"] == [], report
    assert (tmp_path / "out-ffcv" / "src.beton").is_file()
    assert (tmp_path / "out-wds" / "000000.tar").is_file()
