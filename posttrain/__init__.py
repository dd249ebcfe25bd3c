"""posttrain: TRL trainers for post-training and unlearning, a knowledge-graph testbed, and evaluators."""

__version__ = "0.1.0"
