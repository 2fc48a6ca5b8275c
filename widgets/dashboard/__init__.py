"""The served Panel dashboard for collaborators: ``deeplesion-lab serve``.

- :mod:`.app`: the page of one session (map, slice viewer, correction panel, similar lesions,
  3-D, history, metrics, admin), built from the same widget front ends as the notebooks;
- :mod:`.bridge`: the widgets' Panel twins and the bridge keeping twin and widget equal;
- :mod:`.context`: what all sessions share (run, data, label store, who is online, polling);
- :mod:`.finetune_job`: fine-tuning started from the page, as the run's job;
- :mod:`.auth`: users file with hashed passwords, roles, login pages, lockout;
- :mod:`.server`: start the server (loopback by default; login required beyond it);
- :mod:`.cli`: the ``serve`` subcommand (entry point ``deeplesion_lab.commands``);
- :mod:`.client`: a scripted collaborator speaking the browser's protocol (load tests).

Nothing heavy is imported here: ``deeplesion-lab --help`` stays fast.
"""
