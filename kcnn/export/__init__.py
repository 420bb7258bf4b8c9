"""Export to TFLite / SavedModel / .keras, each export verified (TensorFlow backend only)."""
