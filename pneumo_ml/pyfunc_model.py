"""Models-from-code entry point: MLflow runs this file to rebuild the pyfunc (no pickled Python objects)."""
import mlflow

from pneumo_ml.serving import PneumoniaClassifier

mlflow.models.set_model(PneumoniaClassifier())
