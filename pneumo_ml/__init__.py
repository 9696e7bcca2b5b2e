"""pneumo-ml: chest X-ray pneumonia classifiers, trained, compared, explained, registered and served with MLflow.

Research use, not for diagnosis.
"""
__version__ = "0.1.0"
