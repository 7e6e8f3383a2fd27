"""The HTTP app that serves the champion: inputs, the model holder, the prediction log (with the
labels /feedback stores), metrics, the page and the API docs (offline); and the export of those
labels as training data.

Imports `tasks.stages` and below.
"""
