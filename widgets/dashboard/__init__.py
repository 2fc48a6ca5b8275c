"""The served Panel dashboard for collaborators: ``deeplesion-lab serve``.

- :mod:`.app`: the Panel app (map, slice viewer, correction panel, similar lesions, history,
  metrics, admin), built from the same widget front ends as the notebooks;
- :mod:`.auth`: users file with hashed passwords, roles, login pages, lockout;
- :mod:`.server`: start the server (loopback by default; login required beyond it);
- :mod:`.cli`: the ``serve`` subcommand (entry point ``deeplesion_lab.commands``);
- :mod:`.client`: a scripted collaborator speaking the browser's protocol (load tests).

Nothing heavy is imported here: ``deeplesion-lab --help`` stays fast.
"""
