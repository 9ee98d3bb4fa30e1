"""The ground floor: the frozen backbone, default models, data, templates (+ sandbox), verbalizer,
artifacts, atomic writes, metrics, sentence embeddings, generation and errors. Knows no method or trainer."""
