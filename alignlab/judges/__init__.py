"""AI annotators for online preference pairs: ``judge(prompts, pairs, metas) -> Verdicts``."""

from alignlab.judges.base import Judge, Verdicts

__all__ = ["Judge", "Verdicts"]
