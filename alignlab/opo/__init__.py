"""OPO, On-the-fly Preference Optimization (Xu et al. 2023): alignment without training.

Norms live as text rules in an external memory (:mod:`.memory`); the rules relevant to a question are retrieved
(:mod:`.retrievers`) and packed into the prompt under a token budget (:mod:`.prompting`); a norm changes by
editing the memory, with the model's weights untouched. :mod:`.scoring` answers multiple-choice questions from the
letter tokens' probabilities, :mod:`.questions` reads and generates such questions, and :mod:`.evaluate` runs the
conditions (no rules, top-k retrieved, gold rule, random rules) behind ``alignlab-opo``.
"""
