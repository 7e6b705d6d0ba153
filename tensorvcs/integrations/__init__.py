"""Framework integrations, each an optional extra imported on its own (``pip install
tensorvcs[integrations]``); importing ``tensorvcs`` never imports a framework.

- ``tensorvcs.integrations.lightning``: ``TVCSCheckpointIO`` and ``TVCSCheckpoint`` for
  ``lightning`` (or ``pytorch_lightning`` when only that is installed);
- ``tensorvcs.integrations.pytorch_lightning``: the same classes for ``pytorch_lightning``;
- ``tensorvcs.integrations.transformers``: ``TVCSTrainerCallback``, ``commit_dir`` and
  ``checkout_to_dir`` for the Hugging Face ``Trainer`` (and PEFT adapter folders).
"""
