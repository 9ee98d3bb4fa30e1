"""Data-parallel training over torch.distributed.

``env``: what the launcher's environment says (no torch); ``context``: the process group and its collectives;
``step``: one step's sharded backward and gradient all-reduce; ``launch``: ``prompttune train --nproc N``.
Nothing is imported here, so the CLI can read the environment without loading torch.
"""
