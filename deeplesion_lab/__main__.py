"""``python -m deeplesion_lab``: the command line, also under torchrun.

``torchrun`` reads every option it can abbreviate (``--run`` would be its ``--run-path``), so
the command's own arguments follow a ``--``, which is dropped here::

    torchrun --nproc-per-node 2 -m deeplesion_lab -- train-detector --run runs/demo
"""

import sys

from .cli import main

argv = sys.argv[1:]
sys.exit(main(argv[1:] if argv[:1] == ["--"] else argv))
