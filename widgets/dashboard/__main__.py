"""``python -m widgets.dashboard``: serve the dashboard (the options of ``deeplesion-lab serve``)."""

import os
import sys

from .cli import main

os.environ.setdefault("BOKEH_RESOURCES", "server")
sys.exit(main())
