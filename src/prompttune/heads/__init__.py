"""Read-outs other than label words: a trained head over the backbone's hidden states.

base.py (the HeadKind interface and its registry), classification.py, tagging.py (IOB2 tokens), qa.py
(extractive spans), model.py (backbone + method + head, run over the cached prefix), task.py (HeadTask).
"""
