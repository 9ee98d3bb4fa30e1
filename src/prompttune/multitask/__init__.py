"""Many tasks, one model: multi-task packs (``spot``, ``mpt``), transfer from a pack, continual learning
(``progressive``, ``sequential``). See docs/multitask.md."""

from prompttune.multitask.attempt import MixtureTask
from prompttune.multitask.continual import learn_continual
from prompttune.multitask.multi import train_multi
from prompttune.multitask.pack import PackTask, select_task
from prompttune.multitask.transfer import init_from_pack

__all__ = ["MixtureTask", "PackTask", "init_from_pack", "learn_continual", "select_task", "train_multi"]
