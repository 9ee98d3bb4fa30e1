"""Linear probes: a read-out trained on the frozen decoder's own features (``ProbeTask``, ``train --head probe``)."""

from prompttune.probe.task import ProbeTask

__all__ = ["ProbeTask"]
