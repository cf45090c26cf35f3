from tandem.eval.evaluate import evaluate, pass_at_k

__all__ = ["evaluate", "pass_at_k"]
