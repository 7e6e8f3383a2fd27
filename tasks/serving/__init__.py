"""The HTTP app that serves the champion: inputs, the model holder, the prediction log, metrics,
the page.

Imports `tasks.stages` and below.
"""
