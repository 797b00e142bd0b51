"""Self-configuration, as nnU-Net does it: dataset fingerprint -> plan -> the bundle's planned ids.

``medseg plan DATA`` reads every training case once (:mod:`~medseg.planning.fingerprint`),
derives the target spacing, normalisation, cropping and interpolation
(:mod:`~medseg.planning.rules`) and a DynUNet with the patch and batch that fit the GPU
(:mod:`~medseg.planning.topology`), and writes ``fingerprint.json`` and ``plan.json``
(:mod:`~medseg.planning.plan`). ``bundles/generic_3d`` trains from a plan through its
``plan_file`` id (:mod:`~medseg.planning.apply`): every planned value is a bundle id.
"""

from medseg.planning.apply import planned, planned_network, record_plan_files
from medseg.planning.plan import PLAN_FORMAT, check_plan, format_plan, load_plan, make_plan, write_plan
from medseg.planning.runner import plan_dataset

__all__ = ["PLAN_FORMAT", "check_plan", "format_plan", "load_plan", "make_plan", "plan_dataset", "planned",
           "planned_network", "record_plan_files", "write_plan"]
