"""The fine-tune button of LesionLab: start fine-tuning as a background job, follow its progress."""

from __future__ import annotations

from pathlib import Path

import traitlets as t

from deeplesion_lab.errors import LabError

from .lab_widget import LabWidget
from .models.finetune import FinetuneModel

__all__ = ["FinetunePanel"]


class FinetunePanel(LabWidget):
    """A *Fine-tune* button with the job's live progress bar, ETA and last message.

    The button starts ``deeplesion-lab finetune`` on a new snapshot of the current labels as the
    run's ``finetune`` job (:class:`widgets.models.FinetuneModel`): it runs on if the tab or the
    kernel closes, and shows in ``deeplesion-lab jobs`` and notebook 4 too. The button is
    disabled, with the reason shown, while the run has no detector or a fine-tuning job runs.
    The front end asks for the job's state every ``poll_seconds``.

    Parameters
    ----------
    model : FinetuneModel
    """

    _esm = Path(__file__).with_name("finetune_panel.js")
    _css = Path(__file__).with_name("finetune_panel.css")

    job = t.Dict().tag(sync=True)
    request = t.Dict().tag(sync=True)
    status = t.Dict().tag(sync=True)
    poll_seconds = t.Float(2.0).tag(sync=True)

    def __init__(self, model: FinetuneModel, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        model.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Read the job's record again (what a poll from the front end does)."""
        state = self.model.state()
        if state != self.job:
            with self._quietly():
                self.job = state

    @t.observe("request")
    def _on_request(self, change) -> None:
        req = dict(change["new"] or {})
        if self._quiet or not req:
            return
        op = req.get("op")
        if op == "poll":
            self.refresh()
            return
        try:
            if op != "start":
                raise LabError(f"unknown request {op!r}")
            message, ok = self.model.start(), True
        except LabError as exc:
            message, ok = str(exc), False
        self.refresh()
        with self._quietly():
            self.status = {"nonce": req.get("nonce"), "ok": ok, "message": message}
