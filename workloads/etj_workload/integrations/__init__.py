"""The harness inside training frameworks' own loops: callbacks for Hugging Face Transformers and Lightning.

* :mod:`etj_workload.integrations.hf`: :class:`~etj_workload.integrations.hf.EtjTrainerCallback`, a
  ``transformers.TrainerCallback`` for ``Trainer.train()``.
* :mod:`etj_workload.integrations.lightning`: :class:`~etj_workload.integrations.lightning.EtjLightningCallback`,
  a ``pytorch_lightning.Callback`` for ``Trainer.fit()``.

Each one builds a :class:`~etj_workload.harness.Harness` around the framework's model and calls its hooks
from the framework's (train begin, epoch begin and end, each optimizer step, train end), so the job gets what
the harness gives an own loop: the power policy (Auto profiles on the framework's steps), the operator's
control (cap, stages, checkpoint requests, stop), compression stages with the accuracy guard, SIGTERM
handling, progress in the job's report and the metrics endpoint. Checkpoints are the framework's own, written
into ``ETJ_CHECKPOINT_DIR`` when the harness says so, with the harness's state beside them
(:mod:`etj_workload.integrations.store`). Install them with the ``integrations`` extra. docs/bring-your-own-training.md.

Import-light: importing this package imports neither torch nor a framework.
"""

__all__: list[str] = []
