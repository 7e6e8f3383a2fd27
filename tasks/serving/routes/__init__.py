"""The app's routes, one module per job: predictions, feedback labels, and the status a
machine reads (health, readiness, metadata, metrics, reload). Each module's
``add_routes(app, state)`` adds its routes; ``tasks.serving.app`` calls them in order.

Routes are added to the app itself, not through ``include_router``: FastAPI 0.150 resolves
included routers on every request, which cost ~90 us a request here (/health, in-process).
"""
