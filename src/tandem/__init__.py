"""tandem: post-training where SFT and RL work in tandem.

One objective (experience sources x terms x aggregation x controller) covers SFT, GRPO and the
hybrids between them; a method is a named preset of that objective.
"""

__version__ = "0.1.0"
