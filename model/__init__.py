"""Label definitions, turn-in-context encoding, the classifier, its ONNX export and the rule baseline."""
