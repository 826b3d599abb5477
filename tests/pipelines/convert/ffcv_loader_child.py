"""Child process: read a .beton with FFCV's stock Loader and decoders, save what came out.

    python -m tests.pipelines.convert.ffcv_loader_child BETON OUT.npz DECODER [SIZE]

DECODER: ``simple`` (SimpleRGBImageDecoder: every image must have the same size) or
``rrc`` (RandomResizedCropRGBImageDecoder to SIZE x SIZE). One loader per process: FFCV's
loader threads do not survive a second loader in the same process (see test_faults.py).
"""
import sys

import numpy as np
from ffcv.fields.decoders import (IntDecoder, RandomResizedCropRGBImageDecoder,
                                  SimpleRGBImageDecoder)
from ffcv.loader import Loader, OrderOption

beton, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
decoder = (SimpleRGBImageDecoder() if kind == "simple"
           else RandomResizedCropRGBImageDecoder((int(sys.argv[4]),) * 2))
loader = Loader(beton, batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                drop_last=False, pipelines={"image": [decoder], "label": [IntDecoder()]})
images, labels = [], []
for x, y in loader:
    images.append(np.array(x))
    labels.append(np.array(y).reshape(-1))
np.savez(out, images=np.concatenate(images), labels=np.concatenate(labels))
