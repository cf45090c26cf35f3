from tandem.eval.evaluate import evaluate, maj_at_k, pass_at_k

__all__ = ["evaluate", "maj_at_k", "pass_at_k"]
