# The seed's experiment configs, installed as package data (pneumo_ml.experiments).
