"""Quickstarts: from nothing to a trained model and its output in minutes on a laptop CPU, on built-in data.

`genloom quickstart [lm|translate|image]` calls these pipelines; each trains with the shared recipes, then
shows what the model learnt. `say` receives every line of the report (the CLI prints them).
"""
