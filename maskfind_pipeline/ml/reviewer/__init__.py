"""The reviewer: grades of predicted masks (the CNN, the grade model over free signals, their
training, and the report that compares them)."""
