"""The project's vocabulary: the labels, names and defaults that several modules share, each defined here once
(a dependency-free module: the CLI, the engine, the pyfunc and the demo all import it)."""

CLASSES = ("NORMAL", "PNEUMONIA")  # a class's index is its target: 1 = PNEUMONIA, the positive class
NOTICE = "research use, not for diagnosis"  # wherever a prediction is shown
NOTICE_SENTENCE = f"{NOTICE.capitalize()}."

EXPERIMENT = "pneumonia-detection"  # the MLflow experiment
MODEL_NAME = "pneumonia-classifier"  # the registered model
CHAMPION, CHALLENGER = "champion", "challenger"  # its aliases

# The validation figures a run can be early-stopped on and a version promoted by: name -> higher is better.
VALIDATION_METRICS = {"val_auc": True, "val_accuracy": True, "val_loss": False}
PROMOTION_DEFAULTS = {"metric": "val_auc", "margin": 0.0, "alias": CHAMPION, "challenger": CHALLENGER}

ARCHITECTURES = ("small_cnn", "resnet50", "vit_tiny", "densenet121")  # models.create_model's names

# What every prediction says (Predictor.predict, the pyfunc/REST table, batch CSVs): column -> MLflow type.
PREDICTION_FIELDS = {"label": "string", "probability": "double", "confidence": "double", "threshold": "double",
                     "model": "string", "ood_score": "double", "warning": "string"}

# The study's protocol: stratified, patient-grouped split sizes.
STUDY_SPLIT = {"n_train": 200, "n_val": 16, "n_test": 100}
