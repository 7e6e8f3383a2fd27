"""The prediction log: inputs and outputs of served requests in SQLite, the true labels people
send back (``/feedback``), and the readers monitoring and training use.

One module per job: ``ids`` (prediction ids), ``schema`` (the file's tables, opening it),
``labels`` (checking and storing labels), ``writer`` (the serving process's writer thread),
``readers`` (monitoring's window, the labelled rows, the whole log) and ``export`` (the
labelled rows as training data). Serving writes it; monitoring and training only read it.
"""
