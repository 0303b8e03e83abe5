"""EfficientTrainingJob training harness.

Import-light on purpose: importing the package pulls in no torch. The torch-free modules are
:mod:`etj_workload.config` (env parsing), :mod:`etj_workload.gpu`, :mod:`etj_workload.power_model`,
:mod:`etj_workload.profiler`, :mod:`etj_workload.power`, :mod:`etj_workload.control`,
:mod:`etj_workload.kubeclient` (the API client, standard library only) and :mod:`etj_workload.metrics`;
:mod:`etj_workload.harness`, :mod:`etj_workload.trainer`,
:mod:`etj_workload.compression` and :mod:`etj_workload.checkpoint` need torch.
See docs/harness.md.
"""

__all__: list[str] = []
