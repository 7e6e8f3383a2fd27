"""The HTTP app that serves the champion: inputs, the model holder, the routes (predict,
feedback, status), metrics, the page and the API docs (offline). The prediction log it writes
lives in ``tasks.core.prediction_log`` (monitoring and training read it too).

Imports `tasks.stages` and below.
"""
