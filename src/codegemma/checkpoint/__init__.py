"""Reading model weights from disk and putting them into the model, strictly."""
