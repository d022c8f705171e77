"""Estimator research: ablation targets, training data, estimator fitting and faithfulness evaluation.

Sits on the core (``at2_rag``); the application's CLI drives it. Nothing in the core imports it.
"""
