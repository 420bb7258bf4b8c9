"""``python -m kcnn.export.convert_child DIR``: TFLite conversion for a parent on another
backend (see :func:`kcnn.backend.convert_in_tensorflow`).

``DIR`` holds ``model.keras``, ``options.json`` and optionally ``calibration.npy``; the
child writes ``model.tflite``, or ``error.txt`` with the one-line error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(work: Path) -> int:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    from kcnn import quiet
    from kcnn.errors import KcnnError
    from kcnn.io import write_atomic, write_text

    quiet.install()
    import numpy as np

    from kcnn.export.tflite import convert
    from kcnn.saving import load_keras_model

    options = json.loads((work / "options.json").read_text())
    calibration = np.load(work / "calibration.npy") if (work / "calibration.npy").is_file() else None
    try:
        model = load_keras_model(work / "model.keras")
        flat = convert(model, options["mode"], calibration, options["int8_io"],
                       options["float_layers"])
    except KcnnError as err:
        write_text(work / "error.txt", str(err))
        return 2
    write_atomic(work / "model.tflite", lambda tmp: tmp.write_bytes(flat))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
