"""Label words as the read-out: their later tokens laid out for one pass (``label_forms``), the training loss
(``verbalizer_objective``), a step's prefix in the rows' pass (``one_pass_scores``), and samples of many labels
(``sampled_labels``). ``prompttune.scorer.PromptModel`` scores them."""
